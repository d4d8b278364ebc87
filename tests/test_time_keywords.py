"""The observation time: one keyword table (TIME_SOURCES) for the reader, its messages, the date warnings and the repair."""

from __future__ import annotations

from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from rpp_core.image import header_metadata, repair_header
from rpp_core.image.keywords import TIME_KEYS, TIME_SOURCES, unreadable_dates
from rpp_core.products import Origin
from rpp_core.settings import ObservatorySettings

#: one value per keyword, each a different time (2021-03-04 plus n hours), so the winner shows
_T0 = Time("2021-03-04T00:00:00", scale="utc")


def _value(form: str, hours: float):
    t = _T0 + hours * u.hour
    return {"iso": t.isot, "mjd": t.mjd, "jd": t.jd}[form]


def _time(h: fits.Header):
    h = h.copy()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 10, 10
    meta = header_metadata(h, None, (10, 10), ObservatorySettings())  # no EXPTIME: a start time stays the start
    return meta.date_obs, meta.sources["date_obs"]


def test_every_time_keyword_alone_dates_the_frame_and_is_named():
    for n, tk in enumerate(TIME_SOURCES):
        t, src = _time(fits.Header({tk.key: _value(tk.form, n + 1.0)}))
        assert t is not None and abs((t - _T0).sec - 3600.0 * (n + 1)) < 1e-3, tk.key
        assert src.startswith(f"header {tk.key}"), src
        assert ("exposure start" in src) == (tk.moment == "start"), src
        assert (src.origin is Origin.ASSUMED) == (tk.moment == "file"), src


def test_time_keywords_are_trusted_in_the_documented_order():
    h = fits.Header()
    for n, tk in enumerate(TIME_SOURCES):
        h[tk.key] = _value(tk.form, n + 1.0)
    h["TIME-OBS"] = "20:00:00"  # for DATE-OBS once it has only its date
    order = []
    while True:
        t, src = _time(h)
        if t is None:
            break
        key = src.split()[1]
        order.append(src.split(" (")[0])
        if key == "DATE-OBS" and "T" in h["DATE-OBS"]:
            h["DATE-OBS"] = h["DATE-OBS"][:10]  # then its date with TIME-OBS, then its date alone
        elif key == "DATE-OBS" and "TIME-OBS" in h:
            del h["TIME-OBS"]
        else:
            del h[key]
    assert order == ["header DATE-AVG", "header MJD-AVG", "header DATE-OBS", "header DATE-OBS + TIME-OBS",
                     "header DATE-BEG", "header MJD-OBS", "header MJD-BEG", "header JD", "header JD-OBS",
                     "header JD_OBS", "header DATE-OBS", "header DATE"]


def test_no_time_keyword_reads_as_missing_and_names_every_keyword_looked_for():
    t, src = _time(fits.Header({"OBJECT": "M67", "DATE-END": "2021-03-04T01:00:00"}))
    assert t is None and src.origin is Origin.MISSING
    for key in [tk.key for tk in TIME_SOURCES] + list(TIME_KEYS):
        assert key in src, key


def test_unreadable_dates_warn_for_the_keywords_read_and_the_repair_also_fixes_date_end():
    h = fits.Header({"DATE-AVG": "yesterday", "DATE-OBS": "2021-13-45", "DATE-BEG": "soon", "DATE": "never",
                     "DATE-END": "later"})
    warned = unreadable_dates(h)
    assert [w.split()[1] for w in warned] == ["DATE-AVG", "DATE-OBS", "DATE-BEG", "DATE"]  # not DATE-END: never read
    _, repairs = repair_header(fits.Header({"DATE-OBS": "2021/03/04 01:02:03", "DATE-END": "2021/03/04 01:09:03Z"}))
    assert sorted(repairs) == ["DATE-END '2021/03/04 01:09:03Z' -> '2021-03-04T01:09:03'",
                               "DATE-OBS '2021/03/04 01:02:03' -> '2021-03-04T01:02:03'"]


def test_file_browser_shows_the_start_as_written_with_time_obs_joined_to_date_obs_only(tmp_path):
    import numpy as np

    from rpp_core.image import header_summary

    def shown(**cards):
        path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.fits"
        fits.PrimaryHDU(np.zeros((8, 8), np.float32), header=fits.Header(cards)).writeto(path)
        return header_summary(path)["date_obs"]

    both = {"DATE-AVG": "2021-03-04T01:05:00"}
    assert shown(**{"DATE-OBS": "2021-03-04T01:00:00"}, **both) == "2021-03-04T01:00:00"  # the start, not the mid
    assert shown(**{"DATE-OBS": "2021-03-04", "UT": "01:02:03"}) == "2021-03-04T01:02:03.0"
    assert shown(**{"DATE-BEG": "2021-03-04", "TIME-OBS": "01:02:03"}) == "2021-03-04"  # TIME-OBS is DATE-OBS's
    assert shown(**both) == "2021-03-04T01:05:00"
