/* The variables panel of the HTML editor: lists the variables of the form's chosen lists and
   inserts {{ name | default("fallback") }} at the cursor of the textarea. No dependencies. */
(function () {
  "use strict";

  function chosenListIds() {
    // The campaign form's lists (filter_horizontal renames the select to id_lists_to).
    const select = document.getElementById("id_lists_to") || document.getElementById("id_lists");
    if (!select) return [];
    return Array.from(select.options)
      .filter((o) => select.id === "id_lists_to" || o.selected)
      .map((o) => o.value);
  }

  function insertAtCursor(textarea, text) {
    const start = textarea.selectionStart ?? textarea.value.length;
    const end = textarea.selectionEnd ?? start;
    textarea.setRangeText(text, start, end, "end");
    textarea.focus();
    textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function insertion(variable, fallback) {
    if (!fallback || variable.kind === "link") return "{{ " + variable.name + " }}";
    return "{{ " + variable.name + " | default(" + JSON.stringify(fallback) + ") }}";
  }

  async function load(panel) {
    const textarea = document.getElementById(panel.dataset.for);
    const list = panel.querySelector(".skylark-variable-list");
    const lists = chosenListIds();
    const hint = panel.querySelector(".skylark-variables-lists");
    hint.hidden = lists.length > 0 || !document.getElementById("id_lists");
    const url = panel.dataset.variablesUrl + "?lists=" + encodeURIComponent(lists.join(","));
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;
    const data = await response.json();
    list.replaceChildren();
    for (const variable of data.variables) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "skylark-variable";
      button.dataset.name = variable.name;
      const code = document.createElement("code");
      code.textContent = variable.name;
      button.append(code);
      if (variable.label !== variable.name) button.append(" \u2014 " + variable.label);
      button.addEventListener("click", () => {
        const fallback = panel.querySelector(".skylark-fallback").value;
        insertAtCursor(textarea, insertion(variable, fallback));
      });
      item.append(button);
      list.append(item);
    }
  }

  function setUp() {
    for (const panel of document.querySelectorAll(".skylark-html-editor")) {
      load(panel);
      // Reload when the chosen lists change (the filter widget moves options between selects).
      for (const id of ["id_lists_to", "id_lists"]) {
        const select = document.getElementById(id);
        if (select) new MutationObserver(() => load(panel)).observe(select, { childList: true });
        if (select) select.addEventListener("change", () => load(panel));
      }
    }
  }

  // After "load": the admin's filter widget builds id_lists_to on that event.
  if (document.readyState === "complete") setUp();
  else window.addEventListener("load", () => setTimeout(setUp, 0));
})();
