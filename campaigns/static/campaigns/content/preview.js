/* The preview pane shared by the block editor and the Preview pages of templates and campaigns:
   desktop or mobile (375 px) width, images off, the text part, the raw source, and the HTML's
   size against Gmail's 102 KB clipping (the server marks the line where Gmail cuts). */
(function () {
  "use strict";
  function mount(box) {
    let mode = "desktop", data = null;
    const frame = box.querySelector("iframe"), pre = box.querySelector("pre"), size = box.querySelector(".sk-size");
    const buttons = box.querySelectorAll(".sk-preview-modes button");
    function show() {
      if (!data) return;
      const asText = mode === "text" || mode === "source";
      frame.hidden = asText; pre.hidden = !asText;
      frame.style.width = mode === "mobile" ? "375px" : "100%";
      if (asText) pre.textContent = mode === "text" ? data.text : data.source;
      else frame.srcdoc = mode === "images_off" ? data.html_images_off : data.html;
      const kb = (data.html_bytes / 1024).toFixed(1);
      size.textContent = (data.clipped ? box.dataset.sizeClipped : box.dataset.size).replace("%(size)s", kb);
      size.classList.toggle("sk-error", data.clipped);
    }
    for (const button of buttons)
      button.addEventListener("click", () => {
        mode = button.dataset.mode;
        for (const b of buttons) b.classList.toggle("sk-active", b === button);
        show();
      });
    return { show(next) { data = next; show(); } };
  }
  window.SkylarkPreview = { mount };
  // A Preview page carries its message in a JSON script: shown at once.
  for (const box of document.querySelectorAll(".sk-preview[data-preview]"))
    mount(box).show(JSON.parse(document.getElementById(box.dataset.preview).textContent));
})();
