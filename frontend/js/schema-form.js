// Form fields generated from a workflow's input JSON schema (pydantic's): numbers with their
// bounds, text, lists of strings one per line, the prompt_chain task editor for task lists, and a
// JSON box only for what has no better widget.
import { chainEditor } from "./chain-editor.js";
import { h, setText } from "./dom.js";

function deref(schema, prop) {
  if (prop && prop.$ref) return schema.$defs?.[prop.$ref.split("/").pop()] || {};
  return prop || {};
}

function resolve(schema, prop) {
  let p = deref(schema, prop);
  let nullable = false;
  if (Array.isArray(p.anyOf)) {
    const real = p.anyOf.filter((x) => x.type !== "null");
    nullable = real.length < p.anyOf.length;
    const { anyOf, ...rest } = p;
    p = { ...rest, ...deref(schema, real[0]) };
  }
  return { p, nullable };
}

const isChain = (schema, p) => {
  const item = deref(schema, p.items);
  return p.type === "array" && item.properties && "prompt" in item.properties && "name" in item.properties;
};

// "min_sleep_s" -> "Min sleep (s)": pydantic's titles ("Min Sleep S") read worse than the names.
function label(name) {
  const words = name.replace(/_s$/, " (s)").replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function schemaForm(schema, values) {
  const fields = [];
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const { p, nullable } = resolve(schema, raw);
    const value = values[name] !== undefined ? values[name] : p.default;
    const id = `f-${name}`;
    const help = p.description ? h("span", { class: "help", id: `${id}-help` }, p.description) : null;
    const err = h("span", { class: "error field-error", id: `${id}-err` });
    const described = [help && `${id}-help`, `${id}-err`].filter(Boolean).join(" ");
    let input;
    let read;
    let kind = p.type;
    if (isChain(schema, p)) {
      const editor = chainEditor(Array.isArray(value) ? value : []);
      kind = "chain";
      input = editor;
      read = () => editor.value();
      fields.push({ name, kind, nullable, el: h("fieldset", { class: "field wide" }, h("legend", {}, label(name)), help, editor.el, err), read, err, editor });
      continue;
    }
    if (p.type === "integer" || p.type === "number") {
      const min = p.minimum ?? p.exclusiveMinimum;
      input = h("input", { id, name, type: "number", inputmode: "decimal", value: value ?? "", min, max: p.maximum, step: p.type === "integer" ? "1" : "any", placeholder: nullable ? "optional" : "", "aria-describedby": described });
      read = () => (input.value.trim() === "" ? undefined : Number(input.value));
    } else if (p.type === "boolean") {
      input = h("input", { id, name, type: "checkbox", checked: Boolean(value), "aria-describedby": described });
      read = () => input.checked;
    } else if (p.type === "array" && deref(schema, p.items).type === "string") {
      kind = "lines";
      input = h("textarea", { id, name, rows: "3", placeholder: "one per line", "aria-describedby": described }, Array.isArray(value) ? value.join("\n") : "");
      read = () => {
        const lines = input.value.split("\n").map((s) => s.trim()).filter(Boolean);
        return lines.length ? lines : undefined;
      };
    } else if (p.type === "array" || p.type === "object") {
      kind = "json";
      input = h("textarea", { id, name, rows: "4", class: "mono", "aria-describedby": described }, value === undefined || value === null ? "" : JSON.stringify(value, null, 2));
      read = () => (input.value.trim() ? JSON.parse(input.value) : undefined);
    } else if (Array.isArray(p.enum)) {
      input = h("select", { id, name, "aria-describedby": described }, p.enum.map((v) => h("option", { value: v, selected: v === value }, v)));
      read = () => input.value;
    } else {
      const long = (p.maxLength || 0) > 600;
      input = long
        ? h("textarea", { id, name, rows: "3", placeholder: nullable ? "optional" : "", "aria-describedby": described }, value ?? "")
        : h("input", { id, name, type: "text", value: value ?? "", placeholder: nullable ? "optional" : "", autocomplete: "off", "aria-describedby": described });
      read = () => (input.value === "" && (nullable || !required.has(name)) ? undefined : input.value);
    }
    const caption = h("label", { for: id }, label(name), required.has(name) ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null);
    const wide = kind === "lines" || kind === "json" || input.tagName === "TEXTAREA";
    fields.push({ name, kind, nullable, el: h("div", { class: `field${wide ? " wide" : ""}` }, caption, input, help, err), read, err });
  }

  return {
    els: fields.map((f) => f.el),
    collect() {
      const out = {};
      for (const f of fields) {
        let v;
        try {
          v = f.read();
        } catch (err) {
          setText(f.err, `not valid JSON: ${err.message}`);
          throw new Error(`${f.name} is not valid JSON`);
        }
        if (v !== undefined) out[f.name] = v;
      }
      return out;
    },
    showErrors(details) {
      const general = [];
      for (const f of fields) {
        setText(f.err, "");
        if (f.editor) f.editor.showErrors([]);
      }
      for (const d of details || []) {
        const f = fields.find((x) => x.name === (d.loc || [])[0]);
        if (f && f.editor) f.editor.showErrors([d]);
        else if (f) setText(f.err, d.msg);
        else general.push(d.msg);
      }
      return general;
    },
  };
}
