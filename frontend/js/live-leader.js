// Without SharedWorker: the tabs elect a leader with a Web Lock. The leader runs the hub (and so
// the one connection) and talks to the tabs over BroadcastChannels: they post to a shared bus, it
// answers each on a channel named after the tab. When the leader tab goes, the next tab in the
// lock's queue takes over at once and announces itself; every tab then follows again from its
// own cursors, so the new connection resumes where each tab was, without loss.
import { Hub } from "./live-hub.js";

const BUS = "tidings-live";
const LEADER_LOCK = "tidings-live-leader";
const inbox = (tab) => `tidings-live:${tab}`;

// This tab's side: `receive` gets the hub's messages, and {op: "leader"} when a new leader wants
// every follower again.
export function leaderLink(tab, receive) {
  const mine = new BroadcastChannel(inbox(tab));
  mine.onmessage = (msg) => receive(msg.data);
  const bus = new BroadcastChannel(BUS);
  bus.onmessage = (msg) => msg.data.op === "leader" && receive(msg.data);
  navigator.locks.request(LEADER_LOCK, lead);
  return { mode: "leader", post: (msg) => bus.postMessage({ ...msg, tab }) };
}

function lead() {
  const tabs = new Map(); // tab id -> its port
  const hub = new Hub({
    onDrop(port) {
      tabs.delete(port.tab);
      port.channel.close();
    },
  });
  const bus = new BroadcastChannel(BUS);
  bus.onmessage = ({ data }) => {
    if (!data.tab) return; // another leader's announcement, from before this one
    let port = tabs.get(data.tab);
    if (!port) {
      const channel = new BroadcastChannel(inbox(data.tab));
      port = { tab: data.tab, channel, postMessage: (msg) => channel.postMessage(msg) };
      tabs.set(data.tab, port);
    }
    hub.receive(port, data);
  };
  bus.postMessage({ op: "leader" });
  return new Promise(() => {}); // lead while this tab lives
}
