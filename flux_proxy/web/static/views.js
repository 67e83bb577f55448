// The page's views (Generate, Batches, Usage), one <main> each, chosen by the address's #hash
// so a view can be bookmarked and the back button works. Views with `show()`/`hide()` are told
// when they open and close, so they poll only while someone looks.

const VIEWS = ["generate", "batches", "usage"];

export class ViewSwitch {
  constructor(views) {
    this.views = views; // name -> {show, hide} (optional)
    this.current = null;
    window.addEventListener("hashchange", () => this.apply());
  }

  get name() {
    return this.current;
  }

  apply() {
    const wanted = location.hash.replace(/^#/, "");
    const name = VIEWS.includes(wanted) ? wanted : "generate";
    if (name === this.current) return;
    const previous = this.current;
    this.current = name;
    for (const main of document.querySelectorAll("main[data-view]")) main.hidden = main.dataset.view !== name;
    for (const tab of document.querySelectorAll(".view-tab")) {
      if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    document.title = name === "generate" ? "flux-proxy" : `${name[0].toUpperCase()}${name.slice(1)} · flux-proxy`;
    if (previous) this.views[previous]?.hide?.();
    this.views[name]?.show?.();
  }
}
