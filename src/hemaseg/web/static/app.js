// hemaseg review station: plain JavaScript, no framework, nothing loaded from the network.
"use strict";
const hemaseg = (() => {
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") e.textContent = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  };
  // the logged-in user's session: every change sends its CSRF token (the page carries it)
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const role = ($("#who") && $("#who").dataset.role) || "";

  const LOW_CONFIDENCE = 0.8;  // a cell typed with less is flagged "?" in the gallery: a fifth or more of the probability is elsewhere

  function showError(msg) { const e = $("#error"); if (e) e.textContent = msg || ""; }

  async function api(path, options = {}) {
    const opts = { ...options, headers: { "X-CSRF-Token": csrf } };
    if (opts.json !== undefined) {
      opts.method = opts.method || "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
      delete opts.json;
    }
    const r = await fetch(path, opts);
    const data = r.headers.get("Content-Type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
    return data;
  }

  // ---------------------------------------------------------------- cases
  async function indexPage() {
    async function load() {
      const cases = await api("/api/cases" + ($("#show-archived").checked ? "?archived=1" : ""));
      const body = $("#cases tbody");
      body.replaceChildren(...cases.map((c) => el("tr", {},
        el("td", {}, el("a", { href: `/cases/${c.id}`, text: c.name })), el("td", { text: c.images }),
        el("td", { text: c.created_at }), el("td", { text: c.signed_off_at ? `${c.signed_off_by}, ${c.signed_off_at}` : "" }),
        el("td", { text: c.archived_at ? "archived" : "" }))));
    }
    $("#show-archived").addEventListener("change", load);
    $("#new-case").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const name = $("#case-name").value;
        let c;
        try { c = await api("/api/cases", { json: { name } }); } catch (e) {
          if (!e.message.includes("already exists") || !confirm(e.message)) throw e;  // the same name: ask first
          c = await api("/api/cases", { json: { name, duplicate: true } });
        }
        location.href = `/cases/${c.id}`;
      } catch (e) { showError(e.message); }
    });
    await load();
  }

  // ---------------------------------------------------------------- one cell: measurements, reclassify
  function differentialTable(d) {
    $("#differential tbody").replaceChildren(...Object.entries(d.counts).map(([t, n]) =>
      el("tr", { "data-type": t }, el("td", { text: t }), el("td", { class: "count", text: n }), el("td", { text: d.percent[t].toFixed(1) }))));
    const ex = Object.entries(d.excluded || {}).map(([k, n]) => `${k.replace("_", " ")} ${n}`).join(", ");
    $("#total").textContent = `${d.total} typed cells` + (ex ? `; excluded: ${ex}` : "");
    if (d.target) $("#target").textContent = `${d.target.done} of ${d.target.count} white cells counted`
      + (d.target.done >= d.target.count ? " ✓" : "");
    $("#absolute").hidden = !(d.absolute && d.absolute.length);
    $("#absolute tbody").replaceChildren(...(d.absolute || []).map((a) => el("tr", { "data-type": a.type, class: a.flag ? "flagged" : "" },
      el("td", { text: a.type }), el("td", { text: a.percent.toFixed(1) }), el("td", { class: "absolute", text: a.absolute.toFixed(2) }),
      el("td", { text: a.low === null ? "" : `${a.low}-${a.high}` }), el("td", { class: "flag", text: a.flag }))));
  }

  // red cells and platelets (serve --red-cells): ratios, mean diameter, morphology with its ICSH grade
  function redPanel(red, onPick) {
    $("#red").hidden = !red;
    if (!red) return;
    const unit = red.unit === "um" ? "µm" : "px";
    $("#red-counts").textContent = `${red.red_cells} red cells, ${red.platelets} platelets: ${red.platelets_per_1000_red} platelets `
      + `and ${red.white_per_1000_red} white cells per 1000 red cells; mean diameter ${red.mean_diameter} ${unit}`
      + (red.scale_estimated ? " (sizes from each field's estimated scale: a field of all small or all large cells reads as"
        + " normal-sized; enter the µm per pixel before adding images)" : "")
      + (red.morphology_doubtful ? `. DOUBTFUL: the classifier is unsure of ${Math.round(100 * red.morphology_unsure)}% of these`
        + " red cells (31% on the lab it learned from): review them before any grade is reported" : "");
    $("#morphology tbody").replaceChildren(...(red.morphology || []).filter((m) => m.cells).map((m) =>
      el("tr", { "data-morphology": m.morphology, class: onPick ? "pick" : "", title: onPick ? "show these red cells" : "",
        onclick: () => onPick && onPick(m.morphology) },
      el("td", { text: m.morphology }), el("td", { class: "count", text: m.cells }),
        el("td", { text: m.percent.toFixed(1) }), el("td", { text: m.grade }))));
  }

  async function showCell(cellId, onChange) {
    const panel = $("#cell-panel");
    const c = await api(`/api/cells/${cellId}`);
    const rows = Object.entries(c.measurements).map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v })));
    const children = [el("h2", { text: `Cell ${c.number}` }), el("p", { text: `${c.class}, score ${c.score.toFixed(3)}` })];
    if (c.type !== null) {
      const types = window.hemasegTypes || [];
      const select = el("select", { id: "cell-type" }, ...types.map((t) => el("option", { value: t, text: t })));
      select.value = c.type;
      const seen = c.type;
      select.addEventListener("change", async () => {
        try {
          const r = await api(`/api/cells/${cellId}/type`, { json: { type: select.value, expected: seen } });
          showError("");
          if (onChange) onChange(r);
          await showCell(cellId, onChange);
        } catch (e) { showError(e.message); select.value = seen; }
      });
      const m = c.measurements || {};
      const second = m.second_type ? `; next ${m.second_type} (${Number(m.second_confidence).toFixed(2)})` : "";
      // exclusions: left out of the differential, kept and reversible
      const exclude = el("select", { id: "cell-exclusion" }, el("option", { value: "", text: "counted" }),
        ...(window.hemasegExclusions || []).map((r) => el("option", { value: r, text: `excluded: ${r.replace("_", " ")}` })));
      exclude.value = c.excluded || "";
      exclude.addEventListener("change", async () => {
        try {
          const r = await api(`/api/cells/${cellId}/exclusion`, { json: { reason: exclude.value || null } });
          showError("");
          if (onChange) onChange(r);
          await showCell(cellId, onChange);
        } catch (e) { showError(e.message); exclude.value = c.excluded || ""; }
      });
      children.push(el("p", { text: `classifier: ${c.predicted_type} (${(c.type_confidence ?? 0).toFixed(2)})${second}` }),
        el("label", { text: "type " }, select), el("br"), el("label", { text: "in the differential: " }, exclude));
      const said = (h, v) => (h.kind === "exclusion" ? (v ? `excluded: ${v.replace("_", " ")}` : "counted")
        : h.kind === "comment" ? `“${v}”` : h.kind === "merge" ? `merged ${v}` : v);
      if (c.history.length) {
        children.push(el("h3", { text: "History" }), el("ul", {}, ...c.history.map((h) =>
          el("li", { text: `${said(h, h.old_type)} → ${said(h, h.new_type)}, ${h.who}, ${h.at}` }))));
      }
    }
    if (c.type === null && (c.class === "red_cell" || c.class === "platelet")) {  // counts and grades of red cells
      const m = c.measurements || {};
      const change = (path, json, restore) => async () => {
        try {
          const r = await api(`/api/cells/${cellId}/${path}`, { json: json() });
          showError("");
          if (onChange) onChange(r);
          await showCell(cellId, onChange);
        } catch (e) { showError(e.message); restore(); }
      };
      if (c.class === "red_cell" && m.morphology) {
        const seen = c.morphology || m.morphology;  // a reviewer's class, else the classifier's
        const select = el("select", { id: "cell-morphology" },
          ...(window.hemasegMorphologies || []).map((t) => el("option", { value: t, text: t })));
        select.value = seen;
        select.addEventListener("change", change("morphology", () => ({ morphology: select.value, expected: seen }),
          () => { select.value = seen; }));
        children.push(el("p", { text: `classifier: ${m.morphology} (${Number(m.morphology_confidence ?? 0).toFixed(2)})` }),
          el("label", { text: "morphology " }, select), el("br"));
      }
      const exclude = el("select", { id: "cell-exclusion" }, el("option", { value: "", text: "counted" }),
        ...(window.hemasegExclusions || []).map((r) => el("option", { value: r, text: `excluded: ${r.replace("_", " ")}` })));
      exclude.value = c.excluded || "";
      exclude.addEventListener("change", change("exclusion", () => ({ reason: exclude.value || null }),
        () => { exclude.value = c.excluded || ""; }));
      children.push(el("label", { text: "in the red-cell counts: " }, exclude));
      if (c.history.length) {
        const said = (h, v) => (h.kind === "exclusion" ? (v ? `excluded: ${v.replace("_", " ")}` : "counted") : v);
        children.push(el("h3", { text: "History" }), el("ul", {}, ...c.history.map((h) =>
          el("li", { text: `${said(h, h.old_type)} → ${said(h, h.new_type)}, ${h.who}, ${h.at}` }))));
      }
    }
    if (c.type !== null) {  // a reviewer's comment on the cell
      const note = el("textarea", { id: "cell-comment", rows: "2", cols: "30", maxlength: "2000" });
      note.value = c.comment || "";
      const save = el("button", { type: "button", id: "save-comment", onclick: async () => {
        try {
          await api(`/api/cells/${cellId}/comment`, { json: { comment: note.value } });
          showError(""); await showCell(cellId, onChange);
        } catch (e) { showError(e.message); }
      } }, "save comment");
      children.push(el("p", {}, el("label", { text: "comment " }, note), save));
    }
    if (c.type !== null) {  // one cell found as two: merge another cell of this image into this one
      const other = el("input", { id: "merge-number", size: "4", placeholder: "#" });
      const merge = el("button", { type: "button", id: "merge", onclick: async () => {
        try {
          const image = await api(`/api/images/${c.image_id}`);
          const target = image.cells.find((x) => String(x.number) === other.value.trim().replace("#", ""));
          if (!target) throw new Error(`no cell #${other.value} in this image (show the ids to see them)`);
          const r = await api(`/api/cells/${cellId}/merge`, { json: { with: target.id } });
          showError(""); if (onChange) onChange(r); await showCell(cellId, onChange);
        } catch (e) { showError(e.message); }
      } }, "merge");
      children.push(el("p", {}, el("label", { text: "merge cell " }, other), " into this one ", merge));
    }
    if (!location.pathname.startsWith("/images/")) {  // from the gallery: the cell in its image
      children.push(el("p", {}, el("a", { id: "cell-in-image", href: `/images/${c.image_id}#cell=${c.id}`, text: "show in the image" })));
    }
    children.push(el("table", {}, ...rows));
    panel.replaceChildren(...children);
    panel.hidden = false;
  }

  // ---------------------------------------------------------------- a case: upload, progress, gallery
  async function casePage(caseId) {
    let polling = null;
    async function refresh() {
      const c = await api(`/api/cases/${caseId}`);
      window.hemasegTypes = c.types;
      window.hemasegExclusions = c.exclusions;
      window.hemasegMorphologies = c.morphologies;
      if (!$("#fields").childElementCount) {  // the sample fields, filled once (not while someone types)
        $("#fields").replaceChildren(...Object.entries(c.fields).map(([k, f]) => el("label", {}, `${f.label} `,
          el("input", { name: k, "data-kind": f.kind, size: f.kind === "number" ? "6" : "14", value: c.details[k] ?? "",
            placeholder: k === "pixel_size_um" && c.estimated_pixel_size ? `${c.estimated_pixel_size} read` : "" }))));
        $("#case-comment").value = c.comment || "";
      }
      for (const input of $("#details").querySelectorAll("input, textarea, button")) input.disabled = !!c.signed_off_at;
      differentialTable(c.differential);
      redPanel(c.red, redGallery);
      const p = c.progress;
      $("#bar").max = Math.max(1, p.total); $("#bar").value = p.done + p.failed;
      $("#progress-text").textContent = `${p.done} of ${p.total} images segmented` + (p.failed ? `, ${p.failed} failed` : "")
        + (p.pending ? " …" : "");
      const open = !c.signed_off_at;
      const act = (label, method, path) => el("button", { type: "button", class: "small", "data-action": label, onclick: async () => {
        if (label === "delete" && !confirm("Remove this image and its cells from the case?")) return;
        try { await api(path, { method }); showError(""); await refresh(); } catch (e) { showError(e.message); }
      } }, label);
      $("#images").replaceChildren(...c.images.map((i) => el("li", { "data-status": i.status },
        el("a", { href: `/images/${i.id}`, text: i.name }),
        el("span", { class: `status-${i.status}`, text: ` ${i.status}${i.error ? ": " + i.error : ""}, ${i.cells} cells ` }),
        ...(open && i.status === "failed" ? [act("retry", "POST", `/api/images/${i.id}/retry`)] : []),
        ...(open && i.status !== "running" ? [act("delete", "DELETE", `/api/images/${i.id}`)] : []))));
      $("#signed").textContent = c.signed_off_at ? `Signed off by ${c.signed_off_by} at ${c.signed_off_at} (UTC)` : "Not signed off.";
      $("#signoff").hidden = !!c.signed_off_at || !["supervisor", "admin"].includes(role);
      $("#reopen").hidden = !c.signed_off_at || !["supervisor", "admin"].includes(role);
      $("#archive button").textContent = c.archived_at ? "Bring back to the list of cases" : "Archive this case";
      $("#archive").dataset.archived = c.archived_at ? "1" : "";
      if (p.pending && !polling) polling = setInterval(refresh, 1000);
      if (!p.pending && polling) { clearInterval(polling); polling = null; await gallery(); }
      return c;
    }
    // the red cells of one morphology class, least sure first (excluded ones too, marked): each opens in the
    // cell panel, where its class or its place in the counts is changed and the grades follow
    async function redGallery(morphology, keep) {
      const cells = await api(`/api/cases/${caseId}/cells?morphology=${encodeURIComponent(morphology)}`);
      $("#red-review").hidden = false;
      $("#red-review-title").textContent = `Red cells: ${morphology} (${cells.length})`;
      const pick = (thumb) => {
        document.querySelectorAll("#red-gallery .thumb.selected").forEach((x) => x.classList.remove("selected"));
        thumb.classList.add("selected");
        showCell(Number(thumb.dataset.cell), async (r) => { if (r.red) redPanel(r.red, redGallery); await redGallery(morphology, thumb.dataset.cell); });
      };
      $("#red-gallery").replaceChildren(...cells.map((c) => el("figure", { class: "thumb-box" }, el("img", {
        class: c.excluded ? "thumb excluded" : "thumb", src: `/api/cells/${c.id}/crop.png`, alt: `${c.image} cell ${c.number}`,
        "data-cell": c.id, title: `${c.image} #${c.number}: ${c.morphology}${c.reviewed ? " (reviewed)" : ""}`,
        onclick: (ev) => pick(ev.target),
      }), el("figcaption", { text: c.reviewed ? "reviewed" : Number(c.morphology_confidence ?? 0).toFixed(2) }))));
      const again = keep && document.querySelector(`#red-gallery .thumb[data-cell="${keep}"]`);
      if (again) again.classList.add("selected");
      if (!keep) $("#red-review").scrollIntoView({ block: "start" });  // opened from the table: bring it into view
    }
    // the classifier's two most probable types, e.g. "monocyte 0.62, lymphocyte 0.30"
    function topTwo(c) {
      if (!c.predicted_type) return "";
      const first = `${c.top_type || c.predicted_type} ${(c.type_confidence ?? 0).toFixed(2)}`;
      return c.second_type ? `${first}, ${c.second_type} ${Number(c.second_confidence).toFixed(2)}` : first;
    }
    // review at speed: least sure first in each group, unsure cells flagged; keys 1-9 set the selected
    // cell's type (then the next cell is selected), arrows move between cells; drag a cell onto a group
    let byId = {};
    const select = (thumb) => {
      if (!thumb) return;
      document.querySelectorAll(".thumb.selected").forEach((x) => x.classList.remove("selected"));
      thumb.classList.add("selected");
      thumb.scrollIntoView({ block: "nearest" });
      showCell(Number(thumb.dataset.cell), async (r) => { differentialTable(r.differential); await gallery(); });
    };
    const thumbs = () => [...document.querySelectorAll("#gallery .thumb")];
    async function setType(cellId, type) {
      const c = byId[cellId];
      if (!c || c.type === type) return;
      const r = await api(`/api/cells/${cellId}/type`, { json: { type, expected: c.type } });
      differentialTable(r.differential);
    }
    async function exclude(cellId, reason) {
      const r = await api(`/api/cells/${cellId}/exclusion`, { json: { reason } });
      differentialTable(r.differential);
    }
    async function gallery(keep) {
      const cells = await api(`/api/cases/${caseId}/cells?typed=1`);
      byId = Object.fromEntries(cells.map((c) => [c.id, c]));
      const types = window.hemasegTypes.length ? window.hemasegTypes : [...new Set(cells.map((c) => c.type))];
      const groups = [...types, "excluded"];  // excluded cells stay visible, in their own group
      $("#keys").textContent = "keys: " + types.slice(0, 9).map((t, k) => `${k + 1} ${t}`).join(" · ") + " · ← → move";
      $("#gallery").replaceChildren(...groups.map((t) => {
        const members = cells.filter((c) => (t === "excluded" ? c.excluded : !c.excluded && c.type === t))
          .sort((a, b) => (a.type_confidence ?? 1) - (b.type_confidence ?? 1));
        const group = el("div", { class: "gallery-type", "data-type": t }, el("h3", { text: `${t} (${members.length})` }),
          el("div", { class: "thumbs" }, ...members.map((c) => {
            const unsure = (c.type_confidence ?? 1) < LOW_CONFIDENCE;
            return el("figure", { class: unsure ? "thumb-box unsure" : "thumb-box" }, el("img", {
              class: c.excluded ? "thumb excluded" : "thumb", src: `/api/cells/${c.id}/crop.png`, alt: `${c.image} cell ${c.number}`,
              "data-cell": c.id, title: `${c.image} #${c.number}: ${c.type}`, draggable: "true",
              ondragstart: (ev) => ev.dataTransfer.setData("text/plain", String(c.id)),
              onclick: (ev) => select(ev.target),
            }), el("figcaption", { class: "top-two", text: (unsure ? "? " : "") + topTwo(c) }));
          })));
        group.addEventListener("dragover", (ev) => ev.preventDefault());
        group.addEventListener("drop", async (ev) => {
          ev.preventDefault();
          const id = Number(ev.dataTransfer.getData("text/plain"));
          try { await (t === "excluded" ? exclude(id, "artefact") : setType(id, t)); showError(""); await gallery(id); }
          catch (e) { showError(e.message); }
        });
        return group;
      }));
      if (keep) select(document.querySelector(`#gallery .thumb[data-cell="${keep}"]`));
    }
    document.addEventListener("keydown", async (ev) => {
      if (ev.target.closest && ev.target.closest("input, select, textarea")) return;
      const current = document.querySelector("#gallery .thumb.selected");
      const all = thumbs(), k = all.indexOf(current);
      if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
        ev.preventDefault();
        select(all[Math.min(all.length - 1, Math.max(0, k + (ev.key === "ArrowRight" ? 1 : -1)))] || all[0]);
      } else if (/^[1-9]$/.test(ev.key) && current) {
        const type = (window.hemasegTypes || [])[Number(ev.key) - 1];
        if (!type) return;
        const next = all[k + 1] && all[k + 1].dataset.cell;
        try { await setType(Number(current.dataset.cell), type); showError(""); await gallery(next || current.dataset.cell); }
        catch (e) { showError(e.message); }
      }
    });
    $("#upload").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const files = $("#files").files;
      if (!files.length) { showError("choose image files first"); return; }
      const form = new FormData();
      for (const f of files) form.append("files", f);
      try {  // each file is accepted or refused on its own: say which were refused, and why
        const r = await api(`/api/cases/${caseId}/images`, { method: "POST", body: form });
        showError(r.refused.map((x) => x.reason).join("; ")); await refresh();
      } catch (e) { showError(e.message); }
    });
    $("#import").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const r = await api(`/api/cases/${caseId}/import`, { json: { folder: $("#folder").value } });
        showError(r.refused.map((x) => x.reason).join("; ")); await refresh();
      } catch (e) { showError(e.message); }
    });
    $("#details").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const d = { comment: $("#case-comment").value };
      for (const input of $("#fields").querySelectorAll("input")) {
        const v = input.value.trim();
        d[input.name] = v === "" ? null : input.dataset.kind === "number" ? Number(v) : v;
      }
      try { await api(`/api/cases/${caseId}/details`, { json: d }); showError(""); await refresh(); }
      catch (e) { showError(e.message); }
    });
    $("#reopen").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try { await api(`/api/cases/${caseId}/reopen`, { json: { reason: $("#reopen-reason").value } }); showError(""); await refresh(); }
      catch (e) { showError(e.message); }
    });
    $("#archive").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try { await api(`/api/cases/${caseId}/archive`, { json: { archived: !$("#archive").dataset.archived } }); showError(""); await refresh(); }
      catch (e) { showError(e.message); }
    });
    $("#signoff").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api(`/api/cases/${caseId}/signoff`, { json: {} }); showError(""); await refresh();
      } catch (e) { showError(e.message); }
    });
    const c = await refresh();
    if (!c.progress.pending) await gallery();
  }

  // ---------------------------------------------------------------- an image: zoom, pan, layers
  async function imagePage(imageId) {
    const data = await api(`/api/images/${imageId}`);
    window.hemasegTypes = data.types;
    window.hemasegExclusions = data.exclusions;
    window.hemasegMorphologies = data.morphologies;
    const img = $("#picture"), svg = $("#overlay"), stage = $("#stage"), viewer = $("#viewer");
    const ns = "http://www.w3.org/2000/svg";
    let scale = 1, tx = 0, ty = 0;
    const apply = () => { stage.style.transform = `translate(${tx}px, ${ty}px) scale(${scale})`; };
    const fit = () => {
      scale = Math.min(viewer.clientWidth / img.naturalWidth, viewer.clientHeight / img.naturalHeight, 4);
      tx = (viewer.clientWidth - img.naturalWidth * scale) / 2; ty = (viewer.clientHeight - img.naturalHeight * scale) / 2;
      apply();
    };
    const zoom = (f, cx = viewer.clientWidth / 2, cy = viewer.clientHeight / 2) => {
      const s = Math.min(40, Math.max(0.05, scale * f));
      tx = cx - (cx - tx) * (s / scale); ty = cy - (cy - ty) * (s / scale); scale = s; apply();
    };
    img.addEventListener("load", () => {
      svg.setAttribute("width", img.naturalWidth); svg.setAttribute("height", img.naturalHeight);
      svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
      fit();
    });
    img.src = `/api/images/${imageId}/file`;
    const poly = (points, cls) => {
      const p = document.createElementNS(ns, "polygon");
      p.setAttribute("points", points.map((xy) => xy.join(",")).join(" "));
      if (cls) p.setAttribute("class", cls);
      return p;
    };
    for (const c of data.cells) {
      const shape = poly(c.outline[0] || [], "");
      shape.dataset.cell = c.id;
      shape.addEventListener("click", (ev) => {
        ev.stopPropagation();
        document.querySelectorAll("#outlines polygon.selected").forEach((x) => x.classList.remove("selected"));
        shape.classList.add("selected");
        showCell(c.id);
      });
      $("#outlines").append(shape);
      for (const n of c.nucleus) $("#nuclei").append(poly(n));
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", c.measurements.centroid_x); t.setAttribute("y", c.measurements.centroid_y);
      t.textContent = c.number;
      $("#ids").append(t);
    }
    const wanted = Number((location.hash.match(/cell=(\d+)/) || [])[1]);
    const target = wanted && document.querySelector(`#outlines polygon[data-cell="${wanted}"]`);
    if (target) {  // from the gallery: select the cell and centre it, zoomed in
      target.classList.add("selected");
      showCell(wanted);
      const c = data.cells.find((x) => x.id === wanted);
      const centre = () => {  // idempotent: the load event may come after an image already complete
        fit();
        scale = Math.min(4, Math.max(1, scale * 3));
        tx = viewer.clientWidth / 2 - c.measurements.centroid_x * scale; ty = viewer.clientHeight / 2 - c.measurements.centroid_y * scale;
        apply();
      };
      img.addEventListener("load", centre);
      if (img.complete && img.naturalWidth) centre();
    }
    const layer = (box, g) => { const f = () => { $(g).style.display = $(box).checked ? "" : "none"; }; $(box).addEventListener("change", f); f(); };
    layer("#show-outlines", "#outlines"); layer("#show-nuclei", "#nuclei"); layer("#show-ids", "#ids");
    $("#zoom-in").addEventListener("click", () => zoom(1.25));
    $("#zoom-out").addEventListener("click", () => zoom(0.8));
    $("#zoom-fit").addEventListener("click", fit);
    viewer.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = viewer.getBoundingClientRect();
      zoom(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    let drag = null;
    viewer.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX - tx, y: ev.clientY - ty }; });
    window.addEventListener("mousemove", (ev) => { if (drag) { tx = ev.clientX - drag.x; ty = ev.clientY - drag.y; apply(); } });
    window.addEventListener("mouseup", () => { drag = null; });
  }

  // ---------------------------------------------------------------- users (admin)
  async function usersPage(roles) {
    async function load() {
      const users = await api("/api/users");
      $("#users tbody").replaceChildren(...users.map((u) => {
        const pick = el("select", { "data-user": u.id }, ...roles.map((r) => el("option", { value: r, text: r })));
        pick.value = u.role;
        pick.addEventListener("change", async () => {
          try { await api(`/api/users/${u.id}`, { json: { role: pick.value } }); showError(""); } catch (e) { showError(e.message); await load(); }
        });
        const active = el("input", { type: "checkbox" });
        active.checked = !!u.active;
        active.addEventListener("change", async () => {
          try { await api(`/api/users/${u.id}`, { json: { active: active.checked } }); showError(""); } catch (e) { showError(e.message); await load(); }
        });
        return el("tr", {}, el("td", { text: u.name }), el("td", {}, pick), el("td", {}, active), el("td", { text: u.created_at }));
      }));
    }
    $("#new-user").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("/api/users", { json: { name: $("#user-name").value, password: $("#user-password").value, role: $("#user-role").value } });
        $("#user-password").value = ""; showError(""); await load();
      } catch (e) { showError(e.message); }
    });
    await load();
  }

  return { indexPage, casePage, imagePage, usersPage, api };
})();
