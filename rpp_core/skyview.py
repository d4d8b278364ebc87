"""``sky.html``: the run's field in Aladin Lite, with its sources as overlays, readable offline too.

The page loads Aladin Lite v3 from the CDS CDN when opened in a browser with
internet and shows the field on a survey background (DSS2 colour) with
overlays:

- detections (green), with a popup per source (id, position, magnitude, SNR, flags);
- calibrators coloured by their calibration residual (blue: the catalogue is
  brighter than the calibrated magnitude, red: fainter), rejected ones in grey;
- objects identified by each cross-match service (SIMBAD, VSX, SkyBoT, ...), one
  overlay per service.

Offline (an observatory at night) the script does not load; the page then says
so and the same sources are in an HTML table written into the page itself, so
the file is never blank. All data are embedded: the page needs no other file.
Coordinates are ICRS degrees; pixel positions 0-based (docs/catalogue.md).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .fsio import write_text
from .catalog_files import text_values
from .plots import _col, flagged_rows, value_with_error

ALADIN_JS = "https://aladin.cds.unistra.fr/AladinLite/api/v3/latest/aladin.js"
SURVEY = "P/DSS2/color"
#: rows written into the page at most (calibrators and identified objects always, then the brightest)
MAX_ROWS = 5000
#: cross-match services whose name columns mark an identified object (docs/catalogs.md)
SERVICES = {
    "SIMBAD": ("simbad_main_id", "simbad_name"),
    "VSX": ("vsx_name",),
    "SkyBoT": ("skybot_name",),
    "Milliquas": ("milliquas_name",),
    "10 pc": ("pc10_name",),
    "Astro-Colibri": ("colibri_name",),
}
#: residual bins (mag) and their colours: blue negative, red positive
RESIDUAL_BINS = ((-np.inf, -0.05, "#2c5cff"), (-0.05, -0.02, "#8fb0ff"), (-0.02, 0.02, "#ffffff"),
                 (0.02, 0.05, "#ffa08f"), (0.05, np.inf, "#ff3b2c"))


def esasky_link(ra: float, dec: float, fov_deg: float) -> str:
    """ESA Sky centred on (ra, dec) with a field of view of ``fov_deg`` degrees."""
    return f"https://sky.esa.int/esasky/?target={quote(f'{ra:.6f} {dec:+.6f}')}&fov={fov_deg:.4f}&sci=true"


def field_of_view(wcs, shape) -> tuple[float, float, float] | None:
    """Centre RA, Dec and the width (deg) of the frame ``shape`` (ny, nx) through ``wcs``."""
    if wcs is None:
        return None
    ny, nx = shape
    try:
        corners = wcs.pixel_to_world([0, nx - 1, 0, nx - 1, (nx - 1) / 2], [0, 0, ny - 1, ny - 1, (ny - 1) / 2])
        centre = corners[4]
        width = float(max(centre.separation(c).deg for c in corners[:4]) * 2)
        return float(centre.ra.deg), float(centre.dec.deg), width
    except Exception:  # noqa: BLE001 - a broken WCS: the catalogue's positions give the field instead
        return None


def _names(table, service: str) -> np.ndarray:
    out = np.full(len(table), "", dtype=object)
    for name in SERVICES[service]:
        if name in table.colnames:
            col = np.asarray(np.ma.filled(np.ma.asarray(table[name]).astype(str), ""), dtype=object)
            col[np.isin(col, ("None", "nan", "--"))] = ""
            out = np.where(out == "", col, out)
    return out


def _rows_to_show(table, mag: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Indices of the rows in the page: every ``keep`` row, then the brightest, up to :data:`MAX_ROWS`."""
    n = len(table)
    if n <= MAX_ROWS:
        return np.arange(n)
    must = np.flatnonzero(keep)
    rest = np.flatnonzero(~keep)
    order = np.argsort(np.where(np.isfinite(mag[rest]), mag[rest], np.inf), kind="stable")
    chosen = np.concatenate([must, rest[order[: max(MAX_ROWS - len(must), 0)]]])
    return np.sort(chosen)


#: what the page holds of each source, in this order (page_data's ``sources``, :func:`_sources_json`)
_SOURCE_KEYS = ("id", "ra", "dec", "x", "y", "mag", "snr", "flags", "kind", "residual", "ids")


def page_data(table, meta: dict, fov: tuple[float, float, float] | None = None) -> dict:
    """What the page shows, as plain JSON-able data (also used by tests)."""
    head, cols = _page(table, meta, fov)
    keys = list(cols)
    return {**head, "sources": [dict(zip(keys, row)) for row in zip(*cols.values())]}


def _page(table, meta: dict, fov: tuple[float, float, float] | None = None) -> tuple[dict, dict]:
    """:func:`page_data` with its ``sources`` as columns: (every other key, with ``sources`` None in its
    place; {source key: one list per key}). The page is written from the columns: a dict per source
    was 14 of the 90 ms that sky.html takes for 10,000 sources shown."""
    label = meta.get("calibration_label", "")
    ra, dec = _col(table, "ra"), _col(table, "dec")
    mag = _col(table, f"mag_cal_{label}")
    mag_kind = "calibrated"
    if len(mag) == 0 or not np.isfinite(mag).any():
        mag, mag_kind = _col(table, f"mag_{label}"), "instrumental"
    snr, flags = _col(table, f"snr_{label}"), _col(table, "flags")
    used, rej = flagged_rows(table, "calib_used"), flagged_rows(table, "calib_rejected")
    res = _col(table, "calib_residual")
    ids = _col(table, "id") if "id" in table.colnames else np.arange(1, len(table) + 1)
    x, y = _col(table, "x"), _col(table, "y")
    names = {s: _names(table, s) for s in SERVICES}
    identified = np.zeros(len(table), bool)
    for v in names.values():
        identified |= v != ""
    rows = _rows_to_show(table, mag if len(mag) else np.zeros(len(table)), used | rej | identified)

    def nums(a, nd):
        # a column at a time, as round(v, nd) would give each (text_values: exact, and -0.0 kept as round keeps it)
        if len(a) == 0:
            return [None] * len(rows)
        values = a[rows]
        cells = np.copysign(text_values(values, nd), values).astype(object)
        cells[~np.isfinite(values)] = None
        return cells.tolist()

    ra_, dec_, x_, y_, mag_, snr_, res_ = (nums(ra, 7), nums(dec, 7), nums(x, 2), nums(y, 2), nums(mag, 3),
                                           nums(snr, 1), nums(res, 4))
    flags_ = [int(f) if f == f else 0 for f in flags[rows].tolist()] if len(flags) else [0] * len(rows)
    kind = np.where(used, "calibrator", np.where(rej, "rejected", "detection"))[rows]
    kinds = kind.tolist()
    res_ = np.array(res_, object)
    res_[kind == "detection"] = None  # a detection has no residual
    res_ = res_.tolist()
    named = {s: names[s][rows] for s in SERVICES}
    ids_ = [{} for _ in kinds]  # most rows have no identification: no dict comprehension for them
    for k in np.flatnonzero(identified[rows]).tolist():
        ids_[k] = {s: named[s][k] for s in SERVICES if named[s][k]}
    id_list = np.asarray(ids)[rows].astype(int).tolist()
    cols = dict(zip(_SOURCE_KEYS, (id_list, ra_, dec_, x_, y_, mag_, snr_, flags_, kinds, res_, ids_)))
    if fov is None:
        on_sky = [(r, d) for r, d in zip(ra_, dec_) if r is not None and d is not None]
        if on_sky:
            ras = np.array([r for r, _ in on_sky])
            decs = np.array([d for _, d in on_sky])
            ra0 = float(np.degrees(np.arctan2(np.mean(np.sin(np.radians(ras))), np.mean(np.cos(np.radians(ras))))) % 360)
            dec0 = float(np.median(decs))
            width = float(max(np.ptp(decs), np.ptp(((ras - ra0 + 180) % 360 - 180)) * np.cos(np.radians(dec0)), 0.01)) * 1.1
            fov = (ra0, dec0, width)
    head = {
        "title": meta.get("title", ""), "frame": meta.get("frame", ""), "band": meta.get("band", "") or "",
        "mag_kind": mag_kind, "zp": _finite(meta.get("zp")), "zp_err": _finite(meta.get("zp_err")),
        "n_total": len(table), "n_shown": len(id_list), "sources": None,
        "center": None if fov is None else {"ra": fov[0], "dec": fov[1], "fov": fov[2]},
        "esasky": None if fov is None else esasky_link(*fov),
        "survey": SURVEY, "residual_bins": [[None if not np.isfinite(lo) else lo, None if not np.isfinite(hi) else hi, c]
                                             for lo, hi, c in RESIDUAL_BINS],
        "services": list(SERVICES),
    }
    return head, cols


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _table_html(mag_kind: str, cols: dict) -> str:
    head = ("<tr><th>id</th><th>kind</th><th>RA (deg)</th><th>Dec (deg)</th><th>x</th><th>y</th>"
            f"<th>{html.escape(mag_kind)} mag</th><th>SNR</th><th>flags</th><th>residual</th><th>identified as</th></tr>")

    def cells(key, fmt):  # one column at a time: one format call per cell, no function call per cell
        return ["" if v is None else format(v, fmt) for v in cols[key]]

    ra, dec, x, y = cells("ra", ".6f"), cells("dec", "+.6f"), cells("x", ".2f"), cells("y", ".2f")
    mag, snr, res = cells("mag", ".3f"), cells("snr", ".1f"), cells("residual", "+.3f")
    lines = [f"<tr class=\"{k}\"><td>{i}</td><td>{k}</td><td>{a}</td><td>{d}</td><td>{px}</td><td>{py}</td>"
             f"<td>{m}</td><td>{sn}</td><td>{f}</td><td>{r}</td><td>{_identified_as(n)}</td></tr>"
             for i, k, a, d, px, py, m, sn, f, r, n
             in zip(cols["id"], cols["kind"], ra, dec, x, y, mag, snr, cols["flags"], res, cols["ids"])]
    return f"<table id=\"sources\" data-rows=\"{len(lines)}\"><thead>{head}</thead><tbody>\n" + "\n".join(lines) + "\n</tbody></table>"


def _sources_json(cols: dict) -> str:
    """``json.dumps(sources, separators=(",", ":"), allow_nan=False)`` of :func:`page_data`'s sources, from
    the columns: each value's own JSON text (``repr`` of an int or a float is what ``json`` writes; the
    values are finite or None), then one line of text per source; 25 of the 30 ms of ``json.dumps``
    over 10,000 dicts were its work per dict and per value."""
    def numbers(values):
        return ["null" if v is None else repr(v) for v in values]

    kinds = {k: json.dumps(k) for k in set(cols["kind"])}
    items = [f'{{"id":{i},"ra":{a},"dec":{d},"x":{px},"y":{py},"mag":{m},"snr":{sn},"flags":{f},"kind":{kinds[k]},'
             f'"residual":{r},"ids":{json.dumps(n, separators=(",", ":"), allow_nan=False) if n else "{}"}}}'
             for i, a, d, px, py, m, sn, f, k, r, n
             in zip(numbers(cols["id"]), numbers(cols["ra"]), numbers(cols["dec"]), numbers(cols["x"]),
                    numbers(cols["y"]), numbers(cols["mag"]), numbers(cols["snr"]), numbers(cols["flags"]),
                    cols["kind"], numbers(cols["residual"]), cols["ids"])]
    return "[" + ",".join(items) + "]"


def _identified_as(ids: dict) -> str:
    return "; ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in ids.items()) if ids else ""


_SCRIPT = r"""
(function () {
  var data = JSON.parse(document.getElementById('rpp-data').textContent);
  var status = document.getElementById('status');
  function offline(why) {
    document.getElementById('aladin').style.display = 'none';
    status.textContent = why + ' The sources of this run are listed in the table below.';
    status.className = 'offline';
  }
  if (!data.center) { offline('The frame has no sky coordinates (no WCS), so there is no sky view.'); return; }
  if (typeof A === 'undefined' || !A.init) {
    offline('Aladin Lite could not be loaded (no internet connection?).');
    return;
  }
  A.init.then(function () {
    var c = data.center;
    var aladin = A.aladin('#aladin', {survey: data.survey, fov: Math.max(c.fov * 1.2, 0.02),
                                      target: c.ra + ' ' + c.dec, cooFrame: 'ICRS', showReticle: false});
    function popup(s) {
      var d = {id: s.id, kind: s.kind, mag: s.mag, SNR: s.snr, flags: s.flags};
      if (s.residual !== null) { d.residual = s.residual; }
      for (var k in s.ids) { d[k] = s.ids[k]; }
      return d;
    }
    function layer(name, color, shape, size, list) {
      if (!list.length) { return; }
      var cat = A.catalog({name: name + ' (' + list.length + ')', color: color, shape: shape,
                           sourceSize: size, onClick: 'showPopup'});
      aladin.addCatalog(cat);
      cat.addSources(list.map(function (s) { return A.source(s.ra, s.dec, popup(s)); }));
    }
    var onSky = data.sources.filter(function (s) { return s.ra !== null && s.dec !== null; });
    layer('Detections', '#00d000', 'circle', 10, onSky.filter(function (s) { return s.kind === 'detection'; }));
    layer('Rejected calibrators', '#909090', 'cross', 12, onSky.filter(function (s) { return s.kind === 'rejected'; }));
    data.residual_bins.forEach(function (b) {
      var lo = b[0] === null ? -Infinity : b[0], hi = b[1] === null ? Infinity : b[1];
      layer('Calibrators, residual ' + (b[0] === null ? '< ' + hi : b[1] === null ? '> ' + lo : lo + ' to ' + hi) + ' mag',
            b[2], 'square', 12, onSky.filter(function (s) {
              return s.kind === 'calibrator' && s.residual !== null && s.residual >= lo && s.residual < hi; }));
    });
    var colours = ['#ffd000', '#ff00ff', '#00ffff', '#ff8000', '#a0ff00', '#ff6090'];
    data.services.forEach(function (svc, i) {
      layer(svc, colours[i % colours.length], 'triangle', 14, onSky.filter(function (s) { return svc in s.ids; }));
    });
    status.textContent = 'Click a source for its values; the layers button (top left) hides overlays.';
  }).catch(function (e) { offline('Aladin Lite did not start (' + e + ').'); });
})();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
#aladin { width: 100%; height: 70vh; min-height: 400px; }
#status { margin: 0.5em 0; } #status.offline { color: #a00; font-weight: bold; }
table { border-collapse: collapse; font-size: 13px; } th, td { padding: 2px 6px; text-align: right; }
th { position: sticky; top: 0; background: #eee; } td:last-child { text-align: left; }
tr.calibrator { background: #eef4ff; } tr.rejected { background: #f4f4f4; color: #777; }
"""


def render(data: dict) -> str:
    """The HTML of ``sky.html`` for :func:`page_data`'s ``data`` (any JSON-able values: written by ``json``)."""
    sources = data["sources"]
    return _render(data, {k: [s[k] for s in sources] for k in _SOURCE_KEYS},
                   json.dumps(sources, separators=(",", ":"), allow_nan=False))


def _render(data: dict, cols: dict, sources_json: str | None = None) -> str:
    """:func:`render` from :func:`_page`'s head and columns; ``sources_json``, the sources' JSON text, is
    made from the columns when not given (:func:`_sources_json`: their values are finite numbers or None)."""
    title = html.escape(data.get("title") or Path(str(data.get("frame", ""))).name or "RPP run")
    c = data["center"]
    where = (f"centre RA {c['ra']:.5f}°, Dec {c['dec']:+.5f}°, field {c['fov'] * 60:.1f}′" if c else "no sky coordinates")
    zp = ""
    if data.get("zp") is not None:
        zp = f" · zero point {value_with_error(data['zp'], data.get('zp_err'))} ({html.escape(data['band'])})"
    esa = f' · <a href="{html.escape(data["esasky"])}">this field in ESA Sky</a>' if data.get("esasky") else ""
    shown = (f"{data['n_shown']} sources" if data["n_shown"] == data["n_total"]
             else f"{data['n_shown']} of {data['n_total']} sources (calibrators, identified objects, then the brightest)")
    # the sources' text in the place of a marker no other value can hold (a string json escapes: "\\u0000")
    marker = "\0rpp-sources\0"
    head = json.dumps({**data, "sources": marker}, separators=(",", ":"), allow_nan=False)
    sources_json = _sources_json(cols) if sources_json is None else sources_json
    payload = head.replace(json.dumps(marker), sources_json, 1).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: sky view</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style>
<script src="{ALADIN_JS}" charset="utf-8"></script>
</head><body>
<h1>{title}</h1>
<p>{where}{zp}{esa}</p>
<div id="aladin"></div>
<p id="status">Loading Aladin Lite…</p>
<h2>Sources</h2><p>{shown}; magnitudes are {html.escape(data['mag_kind'])}, pixel positions 0-based.</p>
{_table_html(data['mag_kind'], cols)}
<script type="application/json" id="rpp-data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_sky_html(table, meta: dict, path: Path, wcs=None, shape=None) -> Path:
    """Write ``sky.html`` for the run's catalogue (see the module docstring), atomically."""
    fov = field_of_view(wcs, shape) if wcs is not None and shape is not None else None
    text = _render(*_page(table, meta, fov))
    return write_text(Path(path), text)
