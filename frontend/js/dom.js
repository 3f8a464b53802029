// Every string reaches the page as a text node: no innerHTML anywhere, so data cannot become markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") Object.assign(el.style, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function setText(el, value) {
  const text = value === undefined || value === null ? "" : String(value);
  if (el.textContent !== text) el.textContent = text;
}

export function clear(el) {
  el.replaceChildren();
}

export const $ = (id) => document.getElementById(id);

// Text with run ids turned into links to their trace; everything else stays a text node.
const RUN_ID = /\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/g;
export function linkified(text) {
  const out = [];
  let last = 0;
  for (const m of String(text).matchAll(RUN_ID)) {
    out.push(text.slice(last, m.index), h("a", { href: `#/runs/${m[0]}` }, m[0]));
    last = m.index + m[0].length;
  }
  out.push(String(text).slice(last));
  return out;
}
