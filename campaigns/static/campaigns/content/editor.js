/* The block editor: sections, columns and blocks as data, drag to reorder (SortableJS), rich
   text (Squire, its paste sanitized by DOMPurify), a live preview rendered by the server. The
   server validates and sanitizes whatever this sends: nothing here is trusted. */
(function () {
  "use strict";
  const root = document.getElementById("sk-editor");
  const T = JSON.parse(document.getElementById("sk-i18n").textContent);
  const design = JSON.parse(document.getElementById("sk-design").textContent);
  const FONTS = JSON.parse(root.dataset.fonts);
  const NETWORKS = JSON.parse(root.dataset.networks);
  let selected = null; // {s}, {s, c, b} or null (the email's settings)
  const preview = window.SkylarkPreview.mount(root.querySelector(".sk-preview"));
  let squire = null;

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  };
  const emptyStyle = () => ({ color: "", background: "", font: "", font_size: 0, align: "", padding: [] });
  const newBlock = (type) => {
    const defaults = {
      heading: { text: T.new_heading, level: 1 },
      text: { html: "<p>" + T.new_text + "</p>" },
      image: { src: "", alt: "", href: "", width: 0 },
      button: { label: T.new_button, href: "https://example.com" },
      divider: {}, spacer: { height: 24 },
      social: { links: [{ network: "web", href: "https://example.com", label: T.website }] },
      footer: { address: "", unsubscribe_label: "", webview_label: "" },
      html: { html: "<p></p>" },
    };
    return { type, style: emptyStyle(), ...structuredClone(defaults[type]) };
  };
  const newSection = (columns) => ({
    background: "", padding: [], condition: null,
    columns: Array.from({ length: columns }, () => ({ width: 0, blocks: [] })),
  });

  // --- canvas -------------------------------------------------------------------------------
  function summary(block) {
    const strip = (html) => { const d = document.createElement("div"); d.innerHTML = html; return d.textContent; };
    const text = { heading: block.text, text: strip(block.html || ""), button: block.label,
      image: block.alt || block.src, footer: block.address, html: strip(block.html || ""),
      spacer: block.height + " px", social: (block.links || []).map((l) => l.network).join(", ") }[block.type] || "";
    return (text || "").slice(0, 80);
  }

  function renderCanvas() {
    const canvas = root.querySelector(".sk-canvas-sections");
    canvas.replaceChildren();
    design.sections.forEach((section, s) => {
      const columns = el("div", { class: "sk-columns" });
      section.columns.forEach((column, c) => {
        const list = el("div", { class: "sk-blocks", "data-s": s, "data-c": c });
        column.blocks.forEach((block, b) => {
          const isSel = selected && selected.s === s && selected.c === c && selected.b === b;
          list.append(el("div", {
            class: "sk-block" + (isSel ? " sk-selected" : ""), "data-type": block.type,
            onclick: (e) => { e.stopPropagation(); select({ s, c, b }); },
          }, el("span", { class: "sk-handle", text: "⠿", title: T.drag }),
             el("strong", { text: T.types[block.type] }), el("span", { class: "sk-summary", text: " " + summary(block) })));
        });
        const colSel = selected && selected.s === s && selected.c === c && selected.b === undefined;
        columns.append(el("div", { class: "sk-column" + (colSel ? " sk-selected" : ""),
          onclick: (e) => { e.stopPropagation(); select({ s, c }); } }, list,
          column.blocks.length ? null : el("p", { class: "sk-muted", text: T.empty_column })));
      });
      const head = el("div", { class: "sk-section-head" },
        el("span", { class: "sk-handle", text: "⠿", title: T.drag }),
        el("span", { text: T.section + " " + (s + 1) + (section.condition ? " · " + T.conditional : "") }),
        el("button", { type: "button", class: "sk-mini", text: T.remove, title: T.remove_section,
          onclick: (e) => { e.stopPropagation(); design.sections.splice(s, 1); select(null); } }));
      canvas.append(el("div", { class: "sk-section", "data-s": s,
        onclick: () => select({ s, c: 0 }) }, head, columns));
    });
    if (window.Sortable) {
      Sortable.create(canvas, { handle: ".sk-section-head .sk-handle", animation: 120, onEnd: (e) => {
        design.sections.splice(e.newIndex, 0, design.sections.splice(e.oldIndex, 1)[0]);
        selected = null; changed();
      } });
      for (const list of canvas.querySelectorAll(".sk-blocks")) {
        Sortable.create(list, { group: "blocks", animation: 120, onEnd: (e) => {
          const from = design.sections[e.from.dataset.s].columns[e.from.dataset.c].blocks;
          const to = design.sections[e.to.dataset.s].columns[e.to.dataset.c].blocks;
          const [moved] = from.splice(e.oldIndex, 1);
          to.splice(e.newIndex, 0, moved);
          selected = { s: +e.to.dataset.s, c: +e.to.dataset.c, b: e.newIndex };
          changed();
        } });
      }
    }
  }

  function addBlock(type) {
    if (!design.sections.length) design.sections.push(newSection(1));
    const s = selected ? selected.s : design.sections.length - 1;
    const c = selected && selected.c !== undefined ? selected.c : 0;
    const blocks = design.sections[s].columns[c].blocks;
    const at = selected && selected.b !== undefined ? selected.b + 1 : blocks.length;
    blocks.splice(at, 0, newBlock(type));
    select({ s, c, b: at });
  }

  // --- inspector ----------------------------------------------------------------------------
  function field(label, input) { return el("label", { class: "sk-field" }, el("span", { text: label }), input); }
  function textInput(obj, key, { type = "text", onchange } = {}) {
    const input = el("input", { type, value: obj[key] ?? "" });
    input.addEventListener("input", () => { obj[key] = type === "number" ? (parseInt(input.value, 10) || 0) : input.value; (onchange || changed)(); });
    return input;
  }
  function selectInput(obj, key, options) {
    const input = el("select");
    for (const [value, label] of options) input.append(el("option", { value, text: label }));
    input.value = obj[key] ?? "";
    input.addEventListener("change", () => { obj[key] = /^\d+$/.test(input.value) && key !== "font" ? +input.value : input.value; changed(); });
    return input;
  }
  function colourInput(obj, key) {
    const text = textInput(obj, key);
    text.placeholder = "#1a2b3c"; text.maxLength = 7; text.className = "sk-colour-text";
    const picker = el("input", { type: "color", value: obj[key] || "#ffffff" });
    picker.addEventListener("input", () => { obj[key] = picker.value; text.value = picker.value; changed(); });
    return el("span", { class: "sk-colour" }, picker, text);
  }
  function styleFields(style) {
    const padding = el("span", { class: "sk-padding" });
    [T.top, T.right, T.bottom, T.left].forEach((label, i) => {
      const input = el("input", { type: "number", min: 0, max: 120, title: label, placeholder: label, value: style.padding[i] ?? "" });
      input.addEventListener("input", () => {
        const values = Array.from(padding.querySelectorAll("input")).map((x) => parseInt(x.value, 10));
        style.padding = values.every((v) => Number.isInteger(v)) ? values : [];
        changed();
      });
      padding.append(input);
    });
    return el("fieldset", { class: "sk-style" }, el("legend", { text: T.style }),
      field(T.color, colourInput(style, "color")), field(T.background, colourInput(style, "background")),
      field(T.font, selectInput(style, "font", [["", T.default], ...FONTS.map((f) => [f, T.fonts[f]])])),
      field(T.font_size, textInput(style, "font_size", { type: "number" })),
      field(T.align, selectInput(style, "align", [["", T.default], ["left", T.left], ["center", T.center], ["right", T.right]])),
      field(T.padding, padding));
  }
  function richText(block) {
    const area = el("div", { class: "sk-rich", contenteditable: "true" });
    const bar = el("div", { class: "sk-rich-bar" });
    const button = (label, title, run) => bar.append(el("button", { type: "button", class: "sk-mini", text: label, title, onclick: run }));
    if (window.Squire) {
      squire = new Squire(area, { sanitizeToDOMFragment: (html) => DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true }) });
      squire.setHTML(block.html);
      squire.addEventListener("input", () => { block.html = squire.getHTML(); changed({ canvas: false }); });
      button("B", T.bold, () => squire.bold());
      button("I", T.italic, () => squire.italic());
      button("U", T.underline, () => squire.underline());
      button("🔗", T.link, () => { const url = prompt(T.link_prompt, "https://"); if (url) squire.makeLink(url); });
      button("•", T.bullets, () => squire.makeUnorderedList());
      button("1.", T.numbers, () => squire.makeOrderedList());
    }
    return el("div", {}, bar, area);
  }
  function socialFields(block) {
    const box = el("div", { class: "sk-social" });
    block.links.forEach((link, i) => box.append(el("div", { class: "sk-row" },
      selectInput(link, "network", NETWORKS.map((n) => [n, n])), textInput(link, "href"), textInput(link, "label"),
      el("button", { type: "button", class: "sk-mini", text: "✕", onclick: () => { block.links.splice(i, 1); renderInspector(); changed(); } }))));
    box.append(el("button", { type: "button", class: "sk-mini", text: T.add_link,
      onclick: () => { block.links.push({ network: "web", href: "https://", label: "" }); renderInspector(); changed(); } }));
    return box;
  }
  function blockFields(block) {
    const f = [];
    if (block.type === "heading") f.push(field(T.text, textInput(block, "text")), field(T.level, selectInput(block, "level", [[1, "H1"], [2, "H2"], [3, "H3"]])));
    if (block.type === "text") f.push(richText(block));
    if (block.type === "html") { const a = el("textarea", { rows: 8 }); a.value = block.html; a.addEventListener("input", () => { block.html = a.value; changed(); }); f.push(field(T.raw_html, a), el("p", { class: "sk-muted", text: T.raw_html_help })); }
    if (block.type === "image") {
      const src = textInput(block, "src");
      f.push(field(T.image_url, src), field(T.alt, textInput(block, "alt")), field(T.link, textInput(block, "href")), field(T.width, textInput(block, "width", { type: "number" })));
      if (root.dataset.mediaUrl) f.push(mediaPicker(block, src));
    }
    if (block.type === "button") f.push(field(T.label, textInput(block, "label")), field(T.link, textInput(block, "href")));
    if (block.type === "spacer") f.push(field(T.height, textInput(block, "height", { type: "number" })));
    if (block.type === "social") f.push(socialFields(block));
    if (block.type === "footer") f.push(field(T.address, textInput(block, "address")), field(T.unsubscribe_label, textInput(block, "unsubscribe_label")), field(T.webview_label, textInput(block, "webview_label")), el("p", { class: "sk-muted", text: T.footer_help }));
    return f;
  }
  function mediaPicker(block, src) {
    const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/gif,image/webp" });
    input.addEventListener("change", async () => {
      const form = new FormData(); form.append("file", input.files[0]);
      const r = await post(root.dataset.mediaUrl, form);
      if (r.ok) { block.src = r.url; src.value = r.url; if (!block.alt) block.alt = r.name; changed(); } else status(r.error, true);
    });
    return field(T.upload, input);
  }
  function sectionFields(section) {
    section.condition = section.condition || null;
    const cond = section.condition || { field: "", op: "equals", value: "" };
    const sync = () => { section.condition = cond.field ? cond : null; changed(); };
    return [
      field(T.background, colourInput(section, "background")),
      field(T.columns, (() => { const s = el("select"); [1, 2, 3, 4].forEach((n) => s.append(el("option", { value: n, text: n }))); s.value = section.columns.length;
        s.addEventListener("change", () => { const n = +s.value; while (section.columns.length < n) section.columns.push({ width: 0, blocks: [] });
          while (section.columns.length > n) { const gone = section.columns.pop(); section.columns[section.columns.length - 1].blocks.push(...gone.blocks); }
          changed(); renderInspector(); }); return s; })()),
      el("fieldset", { class: "sk-style" }, el("legend", { text: T.show_only }),
        field(T.cond_field, textInput(cond, "field", { onchange: sync })),
        field(T.cond_op, (() => { const s = selectInput(cond, "op", [["equals", T.op_equals], ["not_equals", T.op_not_equals], ["is_set", T.op_is_set], ["is_not_set", T.op_is_not_set]]); s.addEventListener("change", sync); return s; })()),
        field(T.cond_value, textInput(cond, "value", { onchange: sync }))),
    ];
  }
  function settingsFields() {
    const st = design.settings;
    return [
      field(T.preheader, textInput(st, "preheader")), el("p", { class: "sk-muted", text: T.preheader_help }),
      field(T.width, textInput(st, "width", { type: "number" })), field(T.breakpoint, textInput(st, "breakpoint", { type: "number" })),
      field(T.page_background, colourInput(st, "background")), field(T.content_background, colourInput(st, "content_background")),
      field(T.text_color, colourInput(st, "text_color")), field(T.link_color, colourInput(st, "link_color")),
      field(T.font, selectInput(st, "font", FONTS.map((f) => [f, T.fonts[f]]))),
      field(T.language, selectInput(st, "lang", [["en", "English"], ["zh-Hans", "简体中文"]])),
      (() => { const c = el("input", { type: "checkbox" }); c.checked = st.dark_mode; c.addEventListener("change", () => { st.dark_mode = c.checked; changed(); }); return field(T.dark_mode, c); })(),
    ];
  }
  function renderInspector() {
    const box = root.querySelector(".sk-inspector-body");
    box.replaceChildren();
    squire = null;
    let title = T.email_settings, fields;
    if (selected && selected.b !== undefined) {
      const column = design.sections[selected.s].columns[selected.c];
      const block = column.blocks[selected.b];
      title = T.types[block.type];
      fields = [...blockFields(block), styleFields(block.style),
        el("button", { type: "button", class: "sk-danger", text: T.remove_block, onclick: () => { column.blocks.splice(selected.b, 1); select({ s: selected.s, c: selected.c }); } })];
    } else if (selected) {
      title = T.section + " " + (selected.s + 1);
      fields = sectionFields(design.sections[selected.s]);
    } else fields = settingsFields();
    box.append(el("h3", { text: title }), ...fields);
  }
  function select(what) { selected = what; renderCanvas(); renderInspector(); changed({ canvas: false }); }

  // --- preview, save ------------------------------------------------------------------------
  const csrf = () => root.querySelector("input[name=csrfmiddlewaretoken]").value;
  async function post(url, body) {
    body.append("csrfmiddlewaretoken", csrf());
    const r = await fetch(url, { method: "POST", body, credentials: "same-origin" });
    try { return await r.json(); } catch (e) { return { ok: false, error: r.status + " " + r.statusText }; }
  }
  function formData() {
    const f = new FormData();
    f.append("design", JSON.stringify(design));
    f.append("name", root.querySelector("#sk-name").value);
    f.append("subject", root.querySelector("#sk-subject").value);
    return f;
  }
  function status(text, error) { const s = root.querySelector(".sk-status"); s.textContent = text; s.classList.toggle("sk-error", !!error); }
  let timer = null;
  function changed({ canvas = true } = {}) {
    if (canvas) renderCanvas();
    root.dataset.dirty = "1";
    clearTimeout(timer);
    timer = setTimeout(refreshPreview, 400);
  }
  async function refreshPreview() {
    const r = await post(root.dataset.previewUrl, formData());
    if (!r.ok) { status(r.error, true); return; }
    status(""); preview.show(r);
  }
  async function save() {
    status(T.saving);
    const r = await post(root.dataset.saveUrl, formData());
    if (!r.ok) { status(r.error, true); return; }
    root.dataset.dirty = "";
    if (root.dataset.saveUrl.endsWith("/new/save/")) { window.location = r.editor_url; return; }
    status(T.saved);
  }

  function setUp() {
    for (const [type, label] of Object.entries(T.types))
      root.querySelector(".sk-palette-blocks").append(el("button", { type: "button", class: "sk-add", "data-type": type, text: "+ " + label, onclick: () => addBlock(type) }));
    for (const n of [1, 2, 3]) root.querySelector(".sk-palette-sections").append(el("button", { type: "button", class: "sk-add", "data-columns": n,
      text: "+ " + T.section_columns[n], onclick: () => { design.sections.push(newSection(n)); select({ s: design.sections.length - 1, c: 0 }); } }));
    root.querySelector(".sk-settings-button").addEventListener("click", () => select(null));
    root.querySelector(".sk-save").addEventListener("click", save);
    for (const id of ["#sk-name", "#sk-subject"]) root.querySelector(id).addEventListener("input", () => changed({ canvas: false }));
    window.addEventListener("beforeunload", (e) => { if (root.dataset.dirty) e.preventDefault(); });
    renderCanvas(); renderInspector(); refreshPreview();
    root.dataset.dirty = "";
  }
  setUp();
})();
