// The SharedWorker every tab of this browser connects to (live.js starts it): one hub, hence one
// event-stream connection for all the tabs, whatever their number.
import { Hub } from "./live-hub.js";

const hub = new Hub({ onDrop: (port) => port.close() });

addEventListener("connect", (event) => {
  const port = event.ports[0];
  port.onmessage = (msg) => hub.receive(port, msg.data);
});
