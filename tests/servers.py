"""Loopback catalogue servers for the tests: real HTTP on 127.0.0.1, random free port.

One threaded HTTP server speaks the parts of each protocol the pipeline uses,
answering from a synthetic sky built from synthetic test frames
(:func:`rpp_core.synthetic.make_frame` truth), so results can be checked
against truth:

=============  ==========================  =============================================================
path prefix    protocol                    answer shape taken from tests/data/fixtures
=============  ==========================  =============================================================
/gaia/tap      TAP sync (REQUEST=doQuery,  ``gaia_tap/1710099405832VAL-result.vot`` (header, FIELDs, tail)
               LANG=ADQL, QUERY, FORMAT)   gaiadr3.gaia_source and gaiadr3.synthetic_photometry_gspc
/simbad/tap    TAP sync                    SIMBAD TAP VOTable 1.4; column types from
                                           ``simbad/simbad_basic_columns.xml``
/vizier        ASU ``viz-bin/votable``     ``vizier/viz.xml`` (VOTable 1.2, one RESOURCE per catalogue)
/skybot        SkyBoT cone search          ``skybot/skybot_query.vot`` (FIELDs copied verbatim)
/vsx           VSX ``api.list`` JSON        ``vsx/*.json``
/colibri       Astro-Colibri POST          ``astro_colibri_format/NOTE.md``
               /cone_search JSON
=============  ==========================  =============================================================

Faults are queued per service (``server.fail("gaia", status=500)``,
``status=429, retry_after="1"``, ``delay=5``, ``truncate=True``,
``body=b"..."``) and used by the next requests in order. Every request is
logged (``server.count("gaia")``), so tests can prove a re-run used no network.
"""

from __future__ import annotations

import collections
import html
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from astropy.coordinates import SkyCoord
from astropy import units as u
from astropy.table import Table
from astropy.time import Time

from tests.datafiles import data_file

FIXTURES = data_file("fixtures")
GAIA_EPOCH = 2016.0
#: the gaiadr3.gaia_source columns of the synthetic sky, in the order the archive lists them
GAIA_COLUMNS_FOR_TESTS = (
    "source_id", "ra", "dec", "ref_epoch", "pmra", "pmdec", "parallax", "parallax_error",
    "phot_g_mean_mag", "phot_g_mean_flux_over_error", "phot_bp_mean_mag", "phot_bp_mean_flux_over_error",
    "phot_rp_mean_mag", "phot_rp_mean_flux_over_error", "bp_rp", "phot_variable_flag", "ruwe",
)

#: synthetic photometry model of the sky: band -> (prefix, a, b): mag = G + a + b * (BP - RP)
SYNTH_MODEL = {
    "U": ("u_jkc", 0.60, 1.10), "B": ("b_jkc", 0.25, 0.75), "V": ("v_jkc", 0.05, 0.35), "R": ("r_jkc", -0.15, -0.10),
    "I": ("i_jkc", -0.35, -0.45), "u": ("u_sdss", 1.40, 1.20), "g": ("g_sdss", 0.15, 0.55), "r": ("r_sdss", -0.05, 0.05),
    "i": ("i_sdss", -0.20, -0.25), "z": ("z_sdss", -0.30, -0.40),
}


def synthetic_mag(g, color, band):
    _, a, b = SYNTH_MODEL[band]
    return np.asarray(g) + a + b * np.asarray(color)


def sep_deg(ra1, dec1, ra2, dec2):
    """Angular distance (deg), plain numpy haversine: independent of the client's astropy code."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


# ---------------------------------------------------------------- the synthetic sky

@dataclass
class SyntheticSky:
    """Objects the servers know. Positions of Gaia rows are at J2016.0 (linear proper motion)."""

    gaia: Table = field(default_factory=Table)
    simbad: Table = field(default_factory=Table)
    vsx: Table = field(default_factory=Table)
    milliquas: Table = field(default_factory=Table)
    pc10: Table = field(default_factory=Table)
    skybot: list = field(default_factory=list)     # dicts: name, num, cls, mv, errpos, ra, dec, jd, rate_ra, rate_dec (arcsec/h), dgeo, geo_shift_arcsec
    colibri: list = field(default_factory=list)    # dicts as in the Astro-Colibri answer, plus jd
    colibri_sources: list = field(default_factory=list)  # catalogue sources (the answer's "sources" group)
    frames: list = field(default_factory=list)     # (name, frame, epoch Time, first gaia index)

    def add_frame(self, name, frame, epoch: Time, seed=0, n_variable=4, n_bad_ruwe=3, n_high_pm=5,
                  with_objects=True):
        """Put the truth stars of ``frame`` on the sky (Gaia rows moved back to J2016.0).

        Truth row k becomes Gaia source_id ``id0 + k``. The first ``n_variable``
        non-saturated stars are flagged VARIABLE, the next ``n_bad_ruwe`` get RUWE 2.5,
        the next ``n_high_pm`` move 300 mas/yr. With ``with_objects`` SIMBAD, VSX,
        Milliquas, 10 pc, SkyBoT and Astro-Colibri objects sit on chosen truth stars
        (``self.frames[i][3]`` says which).
        """
        rng = np.random.default_rng(seed)
        t = frame.truth
        n = len(t)
        id0 = 10_000_000 * (len(self.frames) + 1)
        pmra = rng.normal(0, 5, n)
        pmdec = rng.normal(0, 5, n)
        normal = np.flatnonzero(~np.asarray(t["saturated"]))
        var_idx = normal[:n_variable]
        ruwe_idx = normal[n_variable:n_variable + n_bad_ruwe]
        hpm_idx = normal[n_variable + n_bad_ruwe:n_variable + n_bad_ruwe + n_high_pm]
        pmra[hpm_idx] = 300.0
        pmdec[hpm_idx] = -200.0
        dt = epoch.jyear - GAIA_EPOCH
        dec16 = np.asarray(t["dec"]) - pmdec * dt / 3.6e6
        ra16 = np.asarray(t["ra"]) - pmra * dt / 3.6e6 / np.cos(np.radians(np.asarray(t["dec"])))
        g = np.asarray(t["mag"], float)
        color = np.asarray(t["color"], float)
        bp = g + 0.5 * color
        rp = bp - color
        flag = np.array(["NOT_AVAILABLE"] * n, dtype=object)
        flag[var_idx] = "VARIABLE"
        ruwe = rng.uniform(0.9, 1.2, n)
        ruwe[ruwe_idx] = 2.5
        foe = np.sqrt(10 ** (-0.4 * (g - 25.0)))  # S/N from photon noise of a bright survey
        rows = Table({
            "source_id": id0 + np.arange(n, dtype=np.int64), "ra": ra16, "dec": dec16, "ref_epoch": np.full(n, GAIA_EPOCH),
            "pmra": pmra, "pmdec": pmdec, "parallax": rng.uniform(0.1, 3.0, n), "parallax_error": np.full(n, 0.05),
            "phot_g_mean_mag": g, "phot_g_mean_flux_over_error": foe, "phot_bp_mean_mag": bp,
            "phot_bp_mean_flux_over_error": foe / 3, "phot_rp_mean_mag": rp, "phot_rp_mean_flux_over_error": foe / 3,
            "bp_rp": color, "phot_variable_flag": flag.astype(str), "ruwe": ruwe,
        })
        self.gaia = rows if len(self.gaia) == 0 else _vstack(self.gaia, rows)
        self.frames.append((name, frame, epoch, id0, {"variable": var_idx, "bad_ruwe": ruwe_idx, "high_pm": hpm_idx}))
        if not with_objects:
            return
        jd = epoch.utc.jd
        pick = normal[n_variable + n_bad_ruwe + n_high_pm:]
        ra_t, dec_t = np.asarray(t["ra"]), np.asarray(t["dec"])
        # SIMBAD: every 7th usable star, J2000 positions with the same proper motions
        s_idx = pick[::7]
        dt2000 = epoch.jyear - 2000.0
        self.simbad = _vstack(self.simbad, Table({
            "main_id": [f"SYN {name} {k}" for k in s_idx], "otype": ["*"] * len(s_idx),
            "ra": ra_t[s_idx] - pmra[s_idx] * dt2000 / 3.6e6 / np.cos(np.radians(dec_t[s_idx])),
            "dec": dec_t[s_idx] - pmdec[s_idx] * dt2000 / 3.6e6,
            "pmra": pmra[s_idx], "pmdec": pmdec[s_idx],
            "ids": [f"SYN {name} {k}|Gaia DR3 {id0 + k}" for k in s_idx],
            "B": g[s_idx] + 0.6, "V": np.where(np.arange(len(s_idx)) % 2 == 0, g[s_idx] + 0.1, np.nan),
        }))
        # VSX: the VARIABLE stars
        # VSX: the VARIABLE stars, 0.5 mag range; every other one has its minimum given as an amplitude
        # (B/vsx f_min = "(", min = 0.5), as VSX does for small-amplitude variables
        amplitude = np.arange(len(var_idx)) % 2 == 0
        self.vsx = _vstack(self.vsx, Table({
            "OID": np.arange(len(var_idx)) + 100 * len(self.frames), "Name": [f"SYN-V{k} {name}" for k in var_idx],
            "Type": [("EW", "RRAB", "SRB", "EA")[k % 4] for k in range(len(var_idx))], "max": g[var_idx] - 0.1, "n_max": ["V"] * len(var_idx),
            "f_min": np.where(amplitude, "(", ""), "min": np.where(amplitude, 0.5, g[var_idx] + 0.4), "n_min": ["V"] * len(var_idx),
            "Period": 0.3 + np.arange(len(var_idx)) * 0.5, "ra": ra_t[var_idx], "dec": dec_t[var_idx],
        }))
        q_idx = pick[3:5]
        self.milliquas = _vstack(self.milliquas, Table({
            "Name": [f"SYNQSO {name} {k}" for k in q_idx], "Type": ["Q"] * len(q_idx), "z": [1.25, 2.5][: len(q_idx)],
            "Rmag": g[q_idx], "Bmag": g[q_idx] + 0.3, "Qpct": [99, 97][: len(q_idx)],
            "ra": ra_t[q_idx], "dec": dec_t[q_idx],
        }))
        # 10 pc sample (J/A+A/650/A201/tablea1): positions at each star's own Epoch, moving 5"/yr and 9"/yr
        p_idx = pick[10:12]
        p_epoch = np.array([2016.0, 2000.0])[: len(p_idx)]
        p_pmra = np.array([3000.0, -8000.0])[: len(p_idx)]
        p_pmde = np.array([-4000.0, 4000.0])[: len(p_idx)]
        p_dt = epoch.jyear - p_epoch
        self.pc10 = _vstack(self.pc10, Table({
            "ObjName": [f"SYN NEAR {name} {k}" for k in p_idx], "ObjType": ["LM", "*"][: len(p_idx)],
            "SpType": ["M4.5V", "K2V"][: len(p_idx)], "plx": [250.0, 120.0][: len(p_idx)],
            "RAdeg": ra_t[p_idx] - p_pmra * p_dt / 3.6e6 / np.cos(np.radians(dec_t[p_idx])),
            "DEdeg": dec_t[p_idx] - p_pmde * p_dt / 3.6e6, "Epoch": p_epoch, "pmRA": p_pmra, "pmDE": p_pmde,
        }))
        # SkyBoT: a main-belt asteroid on star pick[20] and a near-Earth object on pick[21] at the epoch;
        # the NEO is 40" away as seen from the geocentre (topocentric parallax)
        for k, (nm, cls, num, rate, dgeo, shift) in zip(pick[20:22], (
                ("2019 SYN1", "MB>Middle", "-", (-30.0, 8.0), 1.6, 0.0),
                ("99942 Synthia", "NEA>Apollo", "99942", (120.0, -60.0), 0.05, 40.0))):
            self.skybot.append({"name": nm, "num": num, "cls": cls, "mv": float(g[k]), "errpos": 0.05,
                                "ra": float(ra_t[k]), "dec": float(dec_t[k]), "jd": jd, "rate_ra": rate[0],
                                "rate_dec": rate[1], "dgeo": dgeo, "geo_shift_arcsec": shift, "truth_index": int(k),
                                "frame": name})
        # Astro-Colibri: an event on star pick[30] 10 days before, one 200 days before, one outside the field
        k = pick[30]
        t0 = epoch.utc
        for tid, when, ra_e, dec_e, err in (
                (f"SYNT-{name}-1", t0 - 10 * u.day, ra_t[k], dec_t[k], 0.5 / 3600),
                (f"SYNT-{name}-2", t0 - 200 * u.day, ra_t[k], dec_t[k], 0.5 / 3600),
                (f"SYNT-{name}-3", t0 - 5 * u.day, ra_t[k] + 5.0, dec_t[k], 0.5 / 3600),
                (f"SYNGRB-{name}", t0 - 3 * u.day, ra_t[k] + 0.01, dec_t[k], 2.0)):
            self.colibri.append({"trigger_id": tid, "source_name": f"AT {tid}", "type": "GRB" if "GRB" in tid else "SN",
                                 "time": when.isot[:19], "ra": float(ra_e), "dec": float(dec_e), "err": err,
                                 "jd": when.jd, "truth_index": int(k), "frame": name})
        # Astro-Colibri "sources": a catalogue source (not a transient) on star pick[31], discovered decades ago;
        # the API returns catalogue matches whatever the time window
        ks = pick[31]
        self.colibri_sources.append({"source_name": f"SYNXRB {name}", "type": "XRB", "ra": float(ra_t[ks]),
                                     "dec": float(dec_t[ks]), "err": 0.3 / 3600, "discovery_time": "1990-01-01T00:00:00",
                                     "truth_index": int(ks), "frame": name})
        self.frames[-1] = (name, frame, epoch, id0, {
            "simbad": s_idx, "vsx": var_idx, "milliquas": q_idx, "10pc": p_idx, "variable": var_idx,
            "bad_ruwe": ruwe_idx, "high_pm": hpm_idx, "skybot": pick[20:22], "colibri": pick[30],
            "colibri_source": ks})

    def info(self, name):
        for entry in self.frames:
            if entry[0] == name:
                return entry
        raise KeyError(name)


def _vstack(a: Table, b: Table) -> Table:
    from astropy.table import vstack
    if len(a) == 0 and not a.colnames:
        return b
    return vstack([a, b])


# ---------------------------------------------------------------- VOTable writers

def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _td(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "NaN" if not np.isfinite(v) else repr(float(v))
    if isinstance(v, (bool, np.bool_)):
        return "T" if v else "F"
    return _esc(v)


def _rows_xml(rows, prefix="") -> str:
    out = []
    for row in rows:
        out.append(f"  <{prefix}TR>" + "".join(f"<{prefix}TD>{_td(v)}</{prefix}TD>" for v in row) + f"</{prefix}TR>")
    return "\n".join(out)


class GaiaTemplate:
    """Pieces of the real Gaia archive answer, reused to write ours."""

    def __init__(self):
        text = (FIXTURES / "gaia_tap" / "1710099405832VAL-result.vot").read_text()
        i = text.index("<TABLE>")
        self.head = text[:i]
        j = text.index("</TABLE>")
        self.tail = text[j:]
        self.fields = {m.group(1): m.group(0) for m in
                       re.finditer(r'<FIELD[^>]*\sname="(\w+)"[^>]*>.*?</FIELD>', text, re.S)}

    def field(self, name: str) -> str:
        if name in self.fields:
            return self.fields[name]
        # synthetic_photometry_gspc columns are not in the recorded gaia_source answer
        if name.endswith("_mag"):
            return (f'<FIELD datatype="float" name="{name}" ucd="phot.mag" unit="mag">\n'
                    f"<DESCRIPTION>Synthetic magnitude</DESCRIPTION>\n</FIELD>")
        if name.endswith("_flux") or name.endswith("_flux_error"):
            return (f'<FIELD datatype="double" name="{name}" ucd="phot.flux" unit="W.m**-2.nm**-1">\n'
                    f"<DESCRIPTION>Synthetic flux</DESCRIPTION>\n</FIELD>")
        if name.endswith("_flag"):
            return f'<FIELD datatype="boolean" name="{name}" ucd="meta.code"/>'
        raise KeyError(name)

    def render(self, query: str, names, rows, overflow=False) -> str:
        head = re.sub(r'<INFO name="QUERY" value="[^"]*">.*?</INFO>',
                      f'<INFO name="QUERY" value="{_esc(query)}"><![CDATA[{query}]]></INFO>', self.head, flags=re.S)
        fields = "\n".join(self.field(n) for n in names)
        ov = '\n<INFO name="QUERY_STATUS" value="OVERFLOW"/>' if overflow else ""
        tail = self.tail.replace("</TABLE>\n</RESOURCE>", f"</TABLE>{ov}\n</RESOURCE>", 1)
        return f"{head}<TABLE>\n{fields}\n<DATA>\n<TABLEDATA>\n{_rows_xml(rows)}\n</TABLEDATA>\n</DATA>\n\n{tail}"


def tap_error(message: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
            '<RESOURCE type="results">\n'
            f'<INFO name="QUERY_STATUS" value="ERROR">{_esc(message)}</INFO>\n</RESOURCE>\n</VOTABLE>\n')


_SIMBAD_TYPES = {"DOUBLE": ("double", ""), "REAL": ("float", ""), "VARCHAR": ("char", ' arraysize="*"'),
                 "CHAR": ("char", ' arraysize="*"'), "SMALLINT": ("short", ""), "INTEGER": ("int", ""),
                 "BIGINT": ("long", "")}


def simbad_fields() -> dict:
    """FIELD elements for SIMBAD columns, typed from the recorded TAP_SCHEMA answer."""
    from astropy.io.votable import parse
    t = parse(str(FIXTURES / "simbad" / "simbad_basic_columns.xml")).get_first_table().to_table()
    out = {}
    for row in t:
        if row["table_name"] != "basic":
            continue
        dt, extra = _SIMBAD_TYPES.get(str(row["datatype"]).upper(), ("char", ' arraysize="*"'))
        unit = f' unit="{row["unit"]}"' if row["unit"] and str(row["unit"]) != "--" else ""
        ucd = f' ucd="{row["ucd"]}"' if row["ucd"] and str(row["ucd"]) != "--" else ""
        out[str(row["column_name"])] = (f'   <FIELD ID="{row["column_name"]}"{extra} datatype="{dt}" '
                                        f'name="{row["column_name"]}"{ucd}{unit}>\n    <DESCRIPTION>\n     '
                                        f'{_esc(row["description"])}\n    </DESCRIPTION>\n   </FIELD>')
    out["ids"] = ('   <FIELD ID="ids" arraysize="*" datatype="char" name="ids" ucd="meta.id">\n'
                  '    <DESCRIPTION>\n     List of all identifiers concatenated with pipe\n    </DESCRIPTION>\n   </FIELD>')
    for band in ("B", "V"):
        out[band] = (f'   <FIELD ID="{band}" datatype="float" name="{band}" ucd="phot.mag;em.opt.{band}" unit="mag">\n'
                     f'    <DESCRIPTION>\n     Magnitude {band}\n    </DESCRIPTION>\n   </FIELD>')
    return out


def simbad_render(names, rows, overflow=False) -> str:
    fields = simbad_fields()
    body = "\n".join(fields[n] for n in names)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n <RESOURCE type="results">\n'
            '  <INFO name="QUERY_STATUS" value="OK"/>\n'
            f'  <TABLE ID="result_S{int(time.time() * 1000)}" name="result_S{int(time.time() * 1000)}">\n{body}\n'
            f'   <DATA>\n    <TABLEDATA>\n{_rows_xml(rows)}\n    </TABLEDATA>\n   </DATA>\n  </TABLE>\n'
            + ('  <INFO name="QUERY_STATUS" value="OVERFLOW"/>\n' if overflow else '') + ' </RESOURCE>\n</VOTABLE>\n')


VIZIER_FIELDS = {
    "_RAJ2000": '<FIELD name="_RAJ2000" ucd="pos.eq.ra" ref="J2000" datatype="double" width="10" precision="6" unit="deg"><!-- ucd="POS_EQ_RA" -->\n      <DESCRIPTION>Right ascension (FK5, Equinox=J2000.0) (computed by VizieR, not part of the original data)</DESCRIPTION>\n    </FIELD>',
    "_DEJ2000": '<FIELD name="_DEJ2000" ucd="pos.eq.dec" ref="J2000" datatype="double" width="10" precision="6" unit="deg"><!-- ucd="POS_EQ_DEC" -->\n      <DESCRIPTION>Declination (FK5, Equinox=J2000.0) (computed by VizieR, not part of the original data)</DESCRIPTION>\n    </FIELD>',
}
#: the columns of each table we serve (labels from the CDS ReadMe files), as VizieR FIELDs
VIZIER_TABLE_FIELDS = {
    "vsx": {
        "OID": '<FIELD name="OID" ucd="meta.record" datatype="int" width="7"><DESCRIPTION>Internal identifier</DESCRIPTION></FIELD>',
        "Name": '<FIELD name="Name" ucd="meta.id;meta.main" datatype="char" arraysize="30*"><DESCRIPTION>Variable star identifier</DESCRIPTION></FIELD>',
        "Type": '<FIELD name="Type" ucd="meta.code;src.var" datatype="char" arraysize="30*"><DESCRIPTION>Variability type</DESCRIPTION></FIELD>',
        "max": '<FIELD name="max" ucd="phot.mag;stat.max" datatype="float" width="6" precision="3" unit="mag"><DESCRIPTION>? Magnitude at maximum brightness</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "n_max": '<FIELD name="n_max" ucd="meta.note;instr.filter" datatype="char" arraysize="6*"><DESCRIPTION>Passband of max</DESCRIPTION></FIELD>',
        "f_min": '<FIELD name="f_min" ucd="meta.code.error" datatype="char" arraysize="1"><DESCRIPTION>[(] "(" indicates that min is an amplitude</DESCRIPTION></FIELD>',
        "min": '<FIELD name="min" ucd="phot.mag;stat.min" datatype="float" width="6" precision="3" unit="mag"><DESCRIPTION>? Minimum magnitude or amplitude</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "n_min": '<FIELD name="n_min" ucd="meta.note;instr.filter" datatype="char" arraysize="6*"><DESCRIPTION>Passband of min</DESCRIPTION></FIELD>',
        "Period": '<FIELD name="Period" ucd="time.period" datatype="double" width="12" precision="7" unit="d"><DESCRIPTION>? Period</DESCRIPTION><VALUES null="NaN" /></FIELD>',
    },
    "milliquas": {
        "Name": '<FIELD name="Name" ucd="meta.id;meta.main" datatype="char" arraysize="25*"><DESCRIPTION>Name</DESCRIPTION></FIELD>',
        "Type": '<FIELD name="Type" ucd="src.class" datatype="char" arraysize="4*"><DESCRIPTION>Classification</DESCRIPTION></FIELD>',
        "Rmag": '<FIELD name="Rmag" ucd="phot.mag;em.opt.R" datatype="float" width="5" precision="2" unit="mag"><DESCRIPTION>Red magnitude</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "Bmag": '<FIELD name="Bmag" ucd="phot.mag;em.opt.B" datatype="float" width="5" precision="2" unit="mag"><DESCRIPTION>Blue magnitude</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "z": '<FIELD name="z" ucd="src.redshift" datatype="float" width="6" precision="3"><DESCRIPTION>Redshift</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "Qpct": '<FIELD name="Qpct" ucd="stat.likelihood" datatype="short" width="3" unit="%"><DESCRIPTION>Percentage probability</DESCRIPTION></FIELD>',
    },
    # J/A+A/650/A201/tablea1 (ReadMe of the 25-Aug-2023 update): positions in ICRS at Epoch
    "10pc": {
        "ObjName": '<FIELD name="ObjName" ucd="meta.id;meta.main" datatype="char" arraysize="29*"><DESCRIPTION>Name of the object</DESCRIPTION></FIELD>',
        "ObjType": '<FIELD name="ObjType" ucd="src.class" datatype="char" arraysize="6*"><DESCRIPTION>Type of the object</DESCRIPTION></FIELD>',
        "RAdeg": '<FIELD name="RAdeg" ucd="pos.eq.ra;meta.main" ref="H_2016" datatype="double" width="13" precision="9" unit="deg"><DESCRIPTION>Right ascension in ICRS at Epoch</DESCRIPTION></FIELD>',
        "DEdeg": '<FIELD name="DEdeg" ucd="pos.eq.dec;meta.main" ref="H_2016" datatype="double" width="13" precision="9" unit="deg"><DESCRIPTION>Declination in ICRS at Epoch</DESCRIPTION></FIELD>',
        "Epoch": '<FIELD name="Epoch" ucd="time.epoch" datatype="double" width="6" precision="1" unit="yr"><DESCRIPTION>Epoch for position</DESCRIPTION></FIELD>',
        "plx": '<FIELD name="plx" ucd="pos.parallax.trig" datatype="double" width="8" precision="4" unit="mas"><DESCRIPTION>Parallax</DESCRIPTION></FIELD>',
        "pmRA": '<FIELD name="pmRA" ucd="pos.pm;pos.eq.ra" datatype="double" width="16" precision="9" unit="mas/yr"><DESCRIPTION>? Proper motion in right ascension, pmRA*cosDE</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "pmDE": '<FIELD name="pmDE" ucd="pos.pm;pos.eq.dec" datatype="double" width="16" precision="9" unit="mas/yr"><DESCRIPTION>? Proper motion in declination</DESCRIPTION><VALUES null="NaN" /></FIELD>',
        "SpType": '<FIELD name="SpType" ucd="src.spType" datatype="char" arraysize="8*"><DESCRIPTION>Spectral type</DESCRIPTION></FIELD>',
    },
}
#: VizieR -source -> (catalogue id, table name, description, default columns, sky attribute)
VIZIER_CATS = {
    "B/vsx/vsx": ("B/vsx", "B/vsx/vsx", "Variable Star indeX", ["OID", "Name", "Type", "max", "n_max", "min", "n_min", "Period"], "vsx"),
    "VII/294/catalog": ("VII/294", "VII/294/catalog", "Million Quasars catalog", ["Name", "Type", "Rmag", "Bmag", "z", "Qpct"], "milliquas"),
    "J/A+A/650/A201/tablea1": ("J/A+A/650/A201", "J/A+A/650/A201/tablea1", "The 10 parsec sample",
                               ["ObjName", "ObjType", "RAdeg", "DEdeg", "plx", "SpType"], "pc10"),
}
VIZIER_CATS["J/A+A/650/A201"] = VIZIER_CATS["J/A+A/650/A201/tablea1"]  # the catalogue id gives its one table
_VIZIER_SKY_KEY = {"vsx": "vsx", "milliquas": "milliquas", "pc10": "10pc"}


def vizier_fields(source) -> dict:
    return {**VIZIER_FIELDS, **VIZIER_TABLE_FIELDS[_VIZIER_SKY_KEY[VIZIER_CATS[source][4]]]}


def vizier_render(source, params, names, rows, warnings_) -> str:
    cat, table, desc, _, _ = VIZIER_CATS[source]
    known = vizier_fields(source)
    fields = "\n    ".join(known[n] for n in names)
    warn = "\n".join(f'<INFO name="Warning" value="{_esc(w)}"/>' for w in warnings_)
    q = "\n".join(f"{k}={v}" for k, v in params.items())
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<VOTABLE version="1.2" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
            '  xmlns="http://www.ivoa.net/xml/VOTable/v1.2"\n'
            '  xsi:schemaLocation="http://www.ivoa.net/xml/VOTable/v1.2 http://www.ivoa.net/xml/VOTable/v1.2">\n'
            ' <DESCRIPTION>\n   VizieR Astronomical Server (loopback test server)\n </DESCRIPTION>\n'
            '<INFO ID="VERSION" name="votable-version" value="1.97 (28-Nov-2012)"/>\n'
            f'<INFO name="queryParameters" value="{len(params)}">\n{_esc(q)}\n</INFO>\n\n'
            f'<RESOURCE ID="yCat_{abs(hash(cat)) % 100000}" name="{cat}">\n  <DESCRIPTION>{desc}</DESCRIPTION>\n'
            '  <COOSYS ID="J2000" system="eq_FK5" equinox="J2000"/>\n'
            f'  <TABLE ID="{table.replace("/", "_")}" name="{table}">\n    <DESCRIPTION>{desc}</DESCRIPTION>\n'
            f'    {fields}\n<DATA><TABLEDATA>\n{_rows_xml(rows)}\n</TABLEDATA></DATA>\n</TABLE>\n{warn}\n</RESOURCE>\n</VOTABLE>\n')


def vizier_error(messages) -> str:
    """A VizieR error answer: INFO "Error" lines and QUERY_STATUS=ERROR (shape of astroquery's recorded
    ``no_server_error.xml``, which VizieR sends for a query it cannot run)."""
    infos = "\n".join(f'  <INFO name="Error" value="{_esc(m)}" />' for m in messages)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.4">\n'
            ' <DESCRIPTION>VizieR Astronomical Server (loopback test server)</DESCRIPTION>\n'
            f'{infos}\n  <INFO name="QUERY_STATUS" value="ERROR">{_esc(" ".join(messages))}</INFO>\n'
            '  <RESOURCE>\n</RESOURCE>\n</VOTABLE>\n')


class SkybotTemplate:
    def __init__(self):
        text = (FIXTURES / "skybot" / "skybot_query.vot").read_text()
        self.head = text[: text.index("<vot:RESOURCE")]
        i = text.index("<vot:FIELD")
        self.fields = text[i: text.index("<vot:DATA>")]

    def render(self, params, rows, loc) -> str:
        ep = params.get("-ep", "")
        head = self.head.replace('value="2025-01-02"', f'value="{_esc(ep)}"')
        head = re.sub(r'(name="-c" value=")[^"]*"', rf'\g<1>{params.get("-ra")}{params.get("-dec")},rd={params.get("-rd")}"', head)
        return (f'{head}<vot:RESOURCE name="Skybot.ConeSearch"><vot:DESCRIPTION>SkyBoT - List of the targets located in the FOV'
                f'</vot:DESCRIPTION>\n<vot:INFO name="QUERY_STATUS" value="OK"/>\n'
                f'<vot:PARAM ID="epoch" name="Epoch" datatype="char" arraysize="*" ucd="time.epoch" unit="d" value="{_esc(ep)}"/>\n'
                f'<vot:PARAM ID="observer" name="Observer" datatype="char" arraysize="*" ucd="meta.code;obs.observer" value="{_esc(loc)}"/>\n'
                f'<vot:TABLE ID="SkybotConeSearch_results" name="SkybotConeSearch" nrows="{len(rows)}">{self.fields}'
                f'<vot:DATA><vot:TABLEDATA>{_rows_xml(rows, "vot:")}\n</vot:TABLEDATA>\n</vot:DATA>\n</vot:TABLE>\n</vot:RESOURCE>\n</vot:VOTABLE>\n')


# ---------------------------------------------------------------- ADQL (the subset our clients send)

_CIRCLE = re.compile(r"CIRCLE\(\s*'ICRS'\s*,\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*\)", re.I)


def parse_adql(q: str) -> dict:
    m = re.match(r"\s*SELECT\s+(?:TOP\s+(\d+)\s+)?(.*?)\s+FROM\s+(\S+)", q, re.I | re.S)
    if not m:
        raise ValueError("cannot parse query: expected SELECT ... FROM ...")
    cols = []
    for c in m.group(2).split(","):
        c = c.strip().split(" AS ")[0].strip()
        c = c.split(".")[-1].strip().strip('"')
        cols.append(c)
    out = {"top": int(m.group(1)) if m.group(1) else None, "columns": cols, "table": m.group(3).strip()}
    c = _CIRCLE.search(q)
    if c:
        out["circle"] = tuple(float(x) for x in c.groups())
    g = re.search(r"phot_g_mean_mag\s*<\s*([-+\d.eE]+)", q)
    if g:
        out["g_lim"] = float(g.group(1))
    ids = re.search(r"source_id\s+IN\s*\(([^)]*)\)", q, re.I)
    if ids:
        out["ids"] = [int(x) for x in ids.group(1).split(",") if x.strip()]
    return out


# ---------------------------------------------------------------- the server

class CatalogServers:
    """All loopback services on one port. ``url(service)`` gives the endpoint for the profile."""

    def __init__(self, sky: SyntheticSky, colibri_uid: str = "test-uid-7f3a9c", max_rows: int = 100_000,
                 max_ids: int = 1000):
        self.sky = sky
        self.colibri_uid = colibri_uid
        self.max_rows = max_rows
        self.max_ids = max_ids
        self.requests: list[dict] = []
        self.faults: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.lock = threading.Lock()
        self.gaia_tpl = GaiaTemplate()
        self.skybot_tpl = SkybotTemplate()
        handler = self._make_handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="catalog-servers", daemon=True)
        self.thread.start()

    # -- control
    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, service: str) -> str:
        return {"gaia": f"{self.base}/gaia/tap", "simbad": f"{self.base}/simbad/tap", "vizier": f"{self.base}/vizier/viz-bin/votable",
                "skybot": f"{self.base}/skybot/conesearch.php", "vsx": f"{self.base}/vsx/index.php",
                "astrocolibri": f"{self.base}/colibri"}[service]

    def settings(self, **changes):
        """ServicesSettings pointing every endpoint here, short timeouts and no rate-limit waits."""
        from rpp_core.settings import ServicesSettings
        base = dict(gaia_tap=self.url("gaia"), simbad_tap=self.url("simbad"), vizier=self.url("vizier"),
                    skybot=self.url("skybot"), vsx=self.url("vsx"), astrocolibri=self.url("astrocolibri"),
                    timeout_s=5.0, retries=2, backoff_s=0.05, rate_limit_per_s=100.0)
        base.update(changes)
        return ServicesSettings(**base)

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.faults.clear()
        self.max_rows = 100_000

    def fail(self, service: str, *, times: int = 1, **fault):
        """The next ``times`` requests to ``service`` misbehave: ``delay`` (s), ``status`` (+ ``retry_after``,
        ``body``), ``body`` (+ ``ctype``), ``truncate``, ``empty``, or ``until`` (a callable: the answer is held
        until it returns true, at most ``until_timeout`` s; the request's record gets ``until_met``)."""
        with self.lock:
            for _ in range(times):
                self.faults[service].append(fault)

    def count(self, service: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if service is None or r["service"] == service)

    def requests_of(self, service: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["service"] == service]

    # -- HTTP plumbing
    def _make_handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _params(self):
                url = urlparse(self.path)
                params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                body = b""
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    body = self.rfile.read(n)
                ctype = self.headers.get("Content-Type", "")
                if body and "application/x-www-form-urlencoded" in ctype:
                    params.update({k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()})
                return url.path, params, body

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def _send(self, status, body: bytes, ctype="application/x-votable+xml", headers=None, truncate=False):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if truncate:
                    body = body[: max(1, len(body) // 2)]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _handle(self, method):
                path, params, body = self._params()
                service = path.strip("/").split("/")[0]
                service = {"colibri": "astrocolibri"}.get(service, service)
                record = {"service": service, "method": method, "path": path, "params": params, "body": body,
                          "time": time.time()}
                with server.lock:
                    server.requests.append(record)
                    fault = server.faults[service].popleft() if server.faults[service] else None
                if fault and fault.get("until"):  # held until the test's condition holds (or until_timeout)
                    end = time.time() + fault.get("until_timeout", 30.0)
                    while not fault["until"]() and time.time() < end:
                        time.sleep(0.02)
                    record["until_met"] = bool(fault["until"]())
                if fault and fault.get("delay"):
                    end = time.time() + fault["delay"]
                    while time.time() < end:
                        time.sleep(0.02)
                if fault and fault.get("status"):
                    hdrs = {"Retry-After": fault["retry_after"]} if fault.get("retry_after") is not None else {}
                    msg = fault.get("body") or tap_error(f"Internal error {fault['status']}").encode()
                    return self._send(fault["status"], msg, headers=hdrs)
                if fault and fault.get("body") is not None:
                    return self._send(200, fault["body"], ctype=fault.get("ctype", "text/html"))
                try:
                    status, payload, ctype = server.answer(service, method, path, params, body, fault or {})
                except Exception as exc:  # noqa: BLE001 - a server bug must show up as an HTTP 500 in the test
                    return self._send(500, tap_error(f"test server error: {exc}").encode())
                self._send(status, payload.encode() if isinstance(payload, str) else payload, ctype=ctype,
                           truncate=bool(fault and fault.get("truncate")))

        return Handler

    # -- protocol answers
    def answer(self, service, method, path, params, body, fault):
        empty = bool(fault.get("empty"))
        if service in ("gaia", "simbad"):
            if not path.endswith("/sync"):
                return 404, tap_error(f"unknown TAP resource {path}"), "application/x-votable+xml"
            if params.get("REQUEST") != "doQuery" or params.get("LANG", "").upper() != "ADQL" or "QUERY" not in params:
                return 400, tap_error("TAP sync needs REQUEST=doQuery, LANG=ADQL and QUERY"), "application/x-votable+xml"
            if params.get("FORMAT", "votable").lower() not in ("votable", "votable/td", "application/x-votable+xml"):
                return 400, tap_error(f"unsupported FORMAT {params.get('FORMAT')}"), "application/x-votable+xml"
            try:
                q = parse_adql(params["QUERY"])
                maxrec = int(params["MAXREC"]) if "MAXREC" in params else None
            except ValueError as exc:
                return 400, tap_error(str(exc)), "application/x-votable+xml"
            limit = self.max_rows if maxrec is None else min(maxrec, self.max_rows)
            if service == "gaia":
                return self._gaia(q, params["QUERY"], empty, limit)
            return self._simbad(q, params["QUERY"], empty, limit)
        if service == "vizier":
            return self._vizier(params, empty)
        if service == "skybot":
            return self._skybot(params, empty)
        if service == "vsx":
            return self._vsx(params, empty)
        if service == "astrocolibri":
            return self._colibri(path, body, empty, fault)
        return 404, "not found", "text/plain"

    def _gaia(self, q, query, empty, limit):
        sky = self.sky.gaia
        if q["table"].lower() == "gaiadr3.gaia_source":
            if "circle" not in q:
                return 400, tap_error("only cone queries are served here"), "application/x-votable+xml"
            ra0, dec0, r = q["circle"]
            sel = sep_deg(ra0, dec0, np.asarray(sky["ra"]), np.asarray(sky["dec"])) <= r
            if "g_lim" in q:
                sel &= np.asarray(sky["phot_g_mean_mag"]) < q["g_lim"]
            idx = np.flatnonzero(sel) if not empty else np.array([], int)
            names = q["columns"]
            for n in names:
                if n not in sky.colnames:
                    return 400, tap_error(f"Column '{n}' not found in gaiadr3.gaia_source"), "application/x-votable+xml"
            # a TAP service cuts the answer at MAXREC (or its own limit) and says so with QUERY_STATUS=OVERFLOW
            overflow = len(idx) > limit
            idx = idx[:limit]
            rows = [[sky[n][i] for n in names] for i in idx]
            return 200, self.gaia_tpl.render(query, names, rows, overflow), "application/x-votable+xml"
        if q["table"].lower() == "gaiadr3.synthetic_photometry_gspc":
            ids = q.get("ids", [])
            if len(ids) > self.max_ids:
                return 400, tap_error(f"IN list too long ({len(ids)} > {self.max_ids} values)"), "application/x-votable+xml"
            lookup = {int(s): k for k, s in enumerate(sky["source_id"])}
            names = q["columns"]
            rows = []
            for s in ([] if empty else ids):
                k = lookup.get(int(s))
                if k is None:
                    continue
                g, c = float(sky["phot_g_mean_mag"][k]), float(sky["bp_rp"][k])
                if g > 17.65:  # GSPC holds only stars brighter than G = 17.65
                    continue
                row = []
                for n in names:
                    if n == "source_id":
                        row.append(int(s))
                        continue
                    band = next(b for b, (p, _, _) in SYNTH_MODEL.items() if n.startswith(p + "_"))
                    mag = float(synthetic_mag(g, c, band))
                    flux = 10 ** (-0.4 * (mag + 21.1))
                    row.append({"mag": mag, "flux": flux, "flux_error": flux * 0.01 / 1.0857, "flag": False}[n[len(SYNTH_MODEL[band][0]) + 1:]])
                rows.append(row)
            return 200, self.gaia_tpl.render(query, names, rows[:limit], len(rows) > limit), "application/x-votable+xml"
        return 400, tap_error(f"Table '{q['table']}' not found"), "application/x-votable+xml"

    def _simbad(self, q, query, empty, limit):
        if q["table"].lower() != "basic" or "circle" not in q:
            return 400, tap_error("only cone queries on basic are served here"), "application/x-votable+xml"
        problem = simbad_query_problem(query)
        if problem:
            return 400, tap_error(problem), "application/x-votable+xml"
        sky = self.sky.simbad
        ra0, dec0, r = q["circle"]
        idx = [] if empty or len(sky) == 0 else np.flatnonzero(sep_deg(ra0, dec0, np.asarray(sky["ra"]), np.asarray(sky["dec"])) <= r)
        top = q["top"] if q["top"] else len(idx)
        overflow = len(idx) > limit and limit < top
        idx = idx[: min(top, limit)]
        names = q["columns"]
        rows = [[sky[n][i] if n in sky.colnames else "" for n in names] for i in idx]
        return 200, simbad_render(names, rows, overflow), "application/x-votable+xml"

    def _vizier(self, params, empty):
        source = params.get("-source", "")
        if source not in VIZIER_CATS:
            return 200, vizier_error([f"Catalogue '{source}' not found"]), "application/x-votable+xml"
        _, table, _, default, attr = VIZIER_CATS[source]
        known = vizier_fields(source)
        sky = getattr(self.sky, attr)
        ra0, dec0 = (float(x) for x in params["-c"].split())
        r = float(params["-c.rd"]) if "-c.rd" in params else float(params.get("-c.rs", 0)) / 3600.0
        wanted = [c.strip() for c in params.get("-out", "").replace(" ", ",").split(",") if c.strip()] or default
        added = [c.strip() for c in params.get("-out.add", "").split(",") if c.strip()]
        # VizieR refuses a query naming a column the table does not have (the client must ask for real columns)
        unknown = [c for c in wanted if c not in known or c.startswith("_")] + [c for c in added if c not in VIZIER_FIELDS]
        if unknown:
            return 200, vizier_error([f"Column '{c}' unknown in table {table}" for c in unknown]), "application/x-votable+xml"
        names = added + wanted
        pos = ("RAdeg", "DEdeg") if "RAdeg" in sky.colnames else ("ra", "dec")
        idx = [] if empty or len(sky) == 0 else np.flatnonzero(
            sep_deg(ra0, dec0, np.asarray(sky[pos[0]]), np.asarray(sky[pos[1]])) <= r)
        idx = idx[: int(params.get("-out.max", 50))]
        col = {"_RAJ2000": pos[0], "_DEJ2000": pos[1]}
        rows = [[sky[col.get(n, n)][i] if col.get(n, n) in sky.colnames else "" for n in names] for i in idx]
        return 200, vizier_render(source, params, names, rows, []), "application/x-votable+xml"

    def _skybot(self, params, empty):
        for key in ("-ep", "-ra", "-dec", "-rd"):
            if key not in params:
                return 400, f"missing parameter {key}", "text/plain"
        jd = skybot_epoch_jd(params["-ep"])
        if jd is None:
            return 400, f"invalid epoch {params['-ep']!r}", "text/plain"
        ra0, dec0, r = float(params["-ra"]), float(params["-dec"]), float(params["-rd"])
        loc = params.get("-loc", "500")
        # the documented -loc is an IAU (MPC) observatory code: three characters, a letter or digit then two digits
        if not re.fullmatch(r"[0-9A-Z][0-9]{2}", loc.strip()):
            return 400, f"unknown observer location {loc!r}: give an IAU observatory code", "text/plain"
        rows = []
        for o in ([] if empty else self.sky.skybot):
            dh = (jd - o["jd"]) * 24.0
            dec = o["dec"] + o["rate_dec"] * dh / 3600.0
            ra = o["ra"] + o["rate_ra"] * dh / 3600.0 / np.cos(np.radians(o["dec"]))
            if loc.strip() == "500" and o["geo_shift_arcsec"]:
                dec += o["geo_shift_arcsec"] / 3600.0
            d = sep_deg(ra0, dec0, ra, dec)
            if d > r:
                continue
            c = SkyCoord(ra * u.deg, dec * u.deg)
            rows.append([o["num"], o["name"], c.ra.to_string(u.hourangle, sep=" ", precision=4, pad=True),
                         c.dec.to_string(u.deg, sep=" ", precision=3, alwayssign=True, pad=True), o["cls"], o["mv"],
                         o["errpos"], d * 3600.0, o["rate_ra"], o["rate_dec"], o["dgeo"], o["dgeo"] + 1.0, ra, dec,
                         f"https://ssp.imcce.fr/webservices/ssodnet/api/ssocard/{o['name'].replace(' ', '_')}"])
        if not rows:
            return 200, b"", "application/x-votable+xml"  # SkyBoT answers an empty field with an empty body
        return 200, self.skybot_tpl.render(params, rows, loc), "application/x-votable+xml"

    def _vsx(self, params, empty):
        if params.get("view") != "api.list" or params.get("format") != "json":
            return 400, "unsupported view", "text/plain"
        sky = self.sky.vsx
        ra0, dec0, r = float(params["ra"]), float(params["dec"]), float(params.get("radius", 0.1))
        idx = [] if empty or len(sky) == 0 else np.flatnonzero(sep_deg(ra0, dec0, np.asarray(sky["ra"]), np.asarray(sky["dec"])) <= r)
        if len(idx) == 0:
            return 200, '{"VSXObjects":[]}', "application/json"

        def min_text(i):
            if sky["f_min"][i] == "(":
                return f"({sky['min'][i]:.2f}) V"
            return f"{sky['min'][i]:.3f} V"

        objs = [{"Name": str(sky["Name"][i]), "RA2000": f"{sky['ra'][i]:.5f}", "Declination2000": f"{sky['dec'][i]:.5f}",
                 "VariabilityType": str(sky["Type"][i]), "Period": f"{sky['Period'][i]:.7f}",
                 "MaxMag": f"{sky['max'][i]:.3f} V", "MinMag": min_text(i),
                 "Category": "Variable", "OID": str(sky["OID"][i])} for i in idx]
        return 200, json.dumps({"VSXObjects": {"VSXObject": objs}}), "application/json"

    def _colibri(self, path, body, empty, fault):
        if not path.rstrip("/").endswith("/cone_search"):
            return 404, json.dumps({"error": "not found"}), "application/json"
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return 400, json.dumps({"error": "body is not JSON"}), "application/json"
        # the API answers some errors under HTTP 200 (astro-colibri SDK, client._error_envelope): a Flask
        # error tuple serialised as a list, or a dict whose status_code is a string
        if req.get("uid") != self.colibri_uid:
            return 200, json.dumps([{"message": "Invalid user ID", "status_code": 401}, 401]), "application/json"
        if fault.get("envelope") == "dict500":
            return 200, json.dumps({"message": "Internal error while searching", "status_code": "500"}), "application/json"
        try:
            lo = Time(req["time_range"]["min"].replace("+00:00", ""), scale="utc").jd
            hi = Time(req["time_range"]["max"].replace("+00:00", ""), scale="utc").jd
            pos = req["properties"]["position"]
            r = float(req["properties"]["radius"])
        except (KeyError, TypeError, ValueError) as exc:
            return 400, json.dumps({"error": f"bad request: {exc}"}), "application/json"
        events = []
        for ev in ([] if empty else self.sky.colibri):
            if not lo <= ev["jd"] <= hi:
                continue
            if sep_deg(pos["ra"], pos["dec"], ev["ra"], ev["dec"]) > r:
                continue
            events.append({k: ev[k] for k in ("trigger_id", "source_name", "type", "time", "ra", "dec", "err")})
        # catalogue sources are not limited by the time window
        sources = [{k: sv[k] for k in ("source_name", "type", "ra", "dec", "err", "discovery_time")}
                   for sv in ([] if empty else self.sky.colibri_sources)
                   if sep_deg(pos["ra"], pos["dec"], sv["ra"], sv["dec"]) <= r]
        answer = {"voevents": events, "sources": sources, "Xsources": [], "icecat": [], "search_region": "circle"}
        if fault.get("echo_uid"):
            answer["request"] = req  # a server that echoes the request, user id included
        return 200, json.dumps(answer), "application/json"


def skybot_epoch_jd(text: str) -> float | None:
    """SkyBoT's -ep: a Julian date, or an ISO date with an optional time ("2025-01-02", "2025-01-02 03:04:05")."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return Time(text.replace(" ", "T"), format="isot" if ("T" in text or " " in text) else "iso", scale="utc").jd
    except ValueError:
        try:
            return Time(text, scale="utc").jd
        except ValueError:
            return None


#: SIMBAD allfluxes columns whose names are lower case (the only case-sensitive SIMBAD table)
_ALLFLUXES_LOWER = {"u", "g", "r", "i", "z", "oidref"}
_SIMBAD_JOINS = {"ids": 'basic.oid = ids.oidref', "allfluxes": 'basic.oid = allfluxes.oidref'}


def simbad_query_problem(query: str) -> str | None:
    """What SIMBAD TAP would refuse in this query: an unquoted allfluxes band or a wrong join."""
    for m in re.finditer(r'allfluxes\.(?!")(\w+)', query):
        name = m.group(1)
        if name.lower() not in _ALLFLUXES_LOWER:
            # ADQL folds unquoted identifiers to lower case, and allfluxes has no column of that name
            return f"Column allfluxes.{name.lower()} does not exist (allfluxes is case-sensitive: quote \"{name}\")"
    for m in re.finditer(r'JOIN\s+(\w+)\s+ON\s+(.+?)(?=\s+(?:LEFT\s+|RIGHT\s+|INNER\s+)?JOIN\s|\s+WHERE\s|$)', query, re.I | re.S):
        table, cond = m.group(1).lower(), m.group(2).replace('"', "").replace(" ", "").lower()
        want = _SIMBAD_JOINS.get(table)
        if want is None or cond not in (want.replace(" ", ""), "=".join(reversed(want.replace(" ", "").split("=")))):
            return f"wrong join of {table}: {m.group(2).strip()} (join on basic.oid = {table}.oidref)"
    return None


# ---------------------------------------------------------------- the standard test sky

MAIN_FRAME = dict(shape=(512, 512), n_stars=150, seed=11, ra0=120.0, dec0=35.0, pixscale=1.0, mag_range=(12.0, 18.5),
                  n_cosmics=0, n_saturated=0, date_obs="2025-01-02T03:04:05", exptime=60.0, min_separation=0.0)
WIDE_FRAME = dict(shape=(400, 400), n_stars=1400, seed=12, ra0=210.0, dec0=-30.0, pixscale=40.0, fwhm=1.5,
                  mag_range=(10.0, 17.0), n_cosmics=0, n_saturated=0, date_obs="2024-06-01T22:00:00", exptime=30.0)


def frame_epoch(frame) -> Time:
    """Mid-exposure time of a synthetic frame (DATE-OBS + EXPTIME/2)."""
    return Time(frame.header["DATE-OBS"], scale="utc") + frame.header["EXPTIME"] / 2 * u.s


def make_test_sky() -> SyntheticSky:
    from rpp_core.synthetic import make_frame

    sky = SyntheticSky()
    main = make_frame(**MAIN_FRAME)
    sky.add_frame("main", main, frame_epoch(main), seed=1)
    wide = make_frame(**WIDE_FRAME)
    sky.add_frame("wide", wide, frame_epoch(wide), seed=2, with_objects=False)
    return sky
