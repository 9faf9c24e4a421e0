"""The Sites page's pieces: does the deployed model hold at a site (the
site check, core.inference.site_check), the site profiles stored beside it
(core.inference.site_profile, site_store), and adapting it to a site in the
background (core.jobs.background.launch_adaptation). Predict's site choice
lives here too.

The modules that load TensorFlow (site_check, site_profile's fit through the
model, site_adaptation) are imported inside the functions that use them, so
importing this module stays light (tests/test_app_layout.py)."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core.base import files, paths
from core.inference import site_store
from core.inference.case_log import calibration_words  # noqa: F401  (one wording: the case log and reports say it too)
from core.jobs import background
from core.runs import lock
from ui.cache_keys import mtime
from ui.formatting import plain

NO_SITE = "none: the model's own calibration"
VERDICT_SHOWN = {"different": (st.error, ":material/warning:"), "similar": (st.success, ":material/check_circle:"),
                 "too few": (st.info, ":material/info:")}
LOG_LINES = 30


def folder_lines(text: str) -> list[str]:
    """The folders typed one a line (blank lines dropped)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def folder_stamp(folder: str) -> float:
    """Changes when a file is added to or removed from the folder or one of
    its sub-folders (one per patient): part of the site check's cache key."""
    root = Path(folder).expanduser()
    stamps = [mtime(root)]
    for parent, _, _ in os.walk(root):
        stamps.append(mtime(parent))
    return max(stamps)


# ---------------------------------------------------------------------------
# Predict: which calibration answers
# ---------------------------------------------------------------------------

def site_choice(run: dict) -> str | None:
    """Predict's "Site" box: the deployed run's site profiles, the model's own calibration first."""
    names = [profile["name"] for profile in site_store.list_profiles(run["path"])]
    chosen = st.selectbox("Site", [NO_SITE, *names], key="site",
                          help="A site profile recalibrates the model's probabilities and moves its threshold "
                               "for one hospital's scans (fitted on the Sites page).")
    return None if chosen == NO_SITE else chosen




# ---------------------------------------------------------------------------
# Predict: the site check of this session's uploads
# ---------------------------------------------------------------------------

UPLOADS_SEEN = "site_check_uploads"  # session state: {site: {upload key: its slices through the model}}


@st.cache_data(max_entries=64, show_spinner=False)
def _through_model(run_path: str, model_stamp: float, key: str, names: tuple, _images: list, _model) -> dict:
    from core.inference import site_features

    scored = site_features.score(_model, _images, list(names))
    return {"features": scored["features"].astype("float32"), "raw": scored["raw"], "refused": scored["refused"]}


def _upload_slices(run: dict, site: str | None, whole_scans: list, singles: list) -> dict:
    """{upload key: {"features", "raw", "refused", "patient"}}: an uploaded scan (a
    series, a zip, slices ticked as one scan) is one patient; a single slice is its own
    (patient None). Only features are kept, no image; an unreadable upload is left out
    (Predict names it already)."""
    from ui import scans
    from ui.dataset_cache import read_image
    from ui.model import model_stamp, predictor

    model, stamp, found = predictor(run), model_stamp(run), {}
    for name, scan_files in whole_scans:
        key = scans.files_key(scan_files)
        try:
            result = scans.score_upload(run, name, scan_files, site)
        except ValueError:
            continue
        images = [result.scan.rgb(i) for i in result.scored]
        if images:
            slices = _through_model(str(run["path"]), stamp, key, tuple(f"{name} {i}" for i in result.scored),
                                    images, model)
            found[key] = {**slices, "patient": key[:16]}
    for name, content in singles:
        key = scans.files_key([(name, content)])
        try:
            image = read_image(content, name)
        except ValueError:
            continue
        found[key] = {**_through_model(str(run["path"]), stamp, key, (name,), [image], model), "patient": None}
    return found


@st.cache_data(max_entries=16, show_spinner="Checking this session's scans against the model's validation scans…")
def _check_uploads(run_path: str, model_stamp: float, site: str | None, keys: tuple, _seen: dict, _model) -> dict:
    import numpy as np

    from core.inference import site_check

    chosen = [_seen[key] for key in keys]
    patients = [entry["patient"] for entry in chosen for _ in range(len(entry["raw"]))]
    return site_check.check_features(_model, np.concatenate([entry["features"] for entry in chosen]),
                                     np.concatenate([entry["raw"] for entry in chosen]),
                                     np.concatenate([entry["refused"] for entry in chosen]), patients)


def uploads_check(run: dict, site: str | None, whole_scans: list, singles: list) -> None:
    """Predict's site check: the features of the slices scored this session are kept by
    site (never the images); once there are enough, the check's verdict in plain words,
    before that how many more slices and scans it needs."""
    from ui.model import model_stamp, predictor

    if predictor(run).members:  # a pair's features are its two members': the check runs on one run's
        st.caption("The site check of these uploads needs one run's features: deploy one of the pair's runs "
                   "to check a site's scans against it (Sites page).")
        return
    seen = st.session_state.setdefault(UPLOADS_SEEN, {}).setdefault(site or "", {})
    seen.update(_upload_slices(run, site, whole_scans, singles))
    if not seen:
        return
    where = f"site {site}" if site else "this session's uploads"
    st.subheader("Does the model hold for these scans?")
    result = _check_uploads(str(run["path"]), model_stamp(run), site, tuple(sorted(seen)), seen, predictor(run))
    show, icon = VERDICT_SHOWN[result["verdict"]]
    show(result["message"], icon=icon)
    st.caption(f"The site check of {where}: every scan scored this session (each uploaded scan, zip or ticked "
               "group is one patient; a single slice counts as its own), against the model's validation scans. "
               "Only the model's features of each slice are kept for it, not the images.")


# ---------------------------------------------------------------------------
# The site check
# ---------------------------------------------------------------------------

@st.cache_data(max_entries=16, show_spinner="Checking the site's scans against the model's validation scans…")
def _check(run_path: str, model_stamp: float, folder: str, stamp: float, _model) -> dict:
    from core.inference import site_check

    return site_check.check_folder(run_path, folder, predictor=_model)


def show_check(run: dict, folder: str) -> None:
    """The site check of `folder`: the verdict in plain words, the guard's part, the figures."""
    from core.inference import site_check
    from ui.model import model_stamp, predictor

    try:
        result = _check(str(run["path"]), model_stamp(run), folder, folder_stamp(folder), predictor(run))
    except ValueError as error:  # a folder that is not there, or one without slices
        st.error(f"Cannot check this folder: {plain(str(error))}")
        return
    show, icon = VERDICT_SHOWN[result["verdict"]]
    show(result["message"], icon=icon)
    guard = site_check.guard_message(result)
    if guard:
        st.caption(guard)
    if result["problems"]:
        st.warning(f"{len(result['problems'])} files could not be read and were left out: "
                   + "; ".join(plain(p) for p in result["problems"][:5]), icon=":material/warning:")
    with st.expander("The check's figures"):
        st.dataframe(site_check.figures_table(result), hide_index=True, width="stretch")


# ---------------------------------------------------------------------------
# Site profiles
# ---------------------------------------------------------------------------

def profiles_list(run: dict) -> None:
    """The stored profiles, one picked with its summary and figures, and its removal."""
    table = site_store.profiles_table(run["path"])
    if table.empty:
        st.caption("No site profile yet: fit one below on labelled slices of your site.")
        return
    st.dataframe(table, hide_index=True, width="stretch")
    from core.inference import site_profile

    name = st.selectbox("Profile", table["name"].tolist(), key="profile_shown")
    profile = site_store.load_profile(run["path"], name)
    st.markdown(plain(site_profile.summary(profile)))
    st.dataframe(site_profile.figures_table(profile), hide_index=True, width="stretch")
    if st.button(f"Remove profile {name}", key="profile_remove", icon=":material/delete:"):
        site_store.remove_profile(run["path"], name)
        st.rerun()


def fit_form(run: dict) -> None:
    """Fit a profile: a name and the folders of the site's labelled slices; a refusal says why."""
    with st.form("profile_fit"):
        name = st.text_input("Profile name (letters, digits, '.', '_', '-')", key="profile_name")
        folders = st.text_area("Folders of your site's labelled slices, one a line (COVID and NonCOVID "
                               "sub-folders, one folder per patient inside them)", key="profile_folders")
        replace = st.checkbox("Replace a profile of that name", key="profile_replace")
        fit = st.form_submit_button("Fit the profile", icon=":material/tune:")
    if not fit:
        return
    if not name.strip() or not folder_lines(folders):
        st.error("Give the profile a name and at least one folder.")
        return
    from core.inference import site_profile
    from ui.model import predictor

    try:
        with st.spinner("Scoring the site's slices and fitting the profile…"):
            profile = site_profile.fit_profile(run["path"], name.strip(), folder_lines(folders), replace=replace,
                                               predictor=predictor(run))
    except ValueError as error:  # too few patients (how many more), a bad name, an existing profile
        st.error(f"Profile not fitted: {plain(str(error))}", icon=":material/block:")
        return
    st.success(f"Profile {profile['name']} fitted: choose it on Predict under *Site*.", icon=":material/check:")
    st.rerun()


# ---------------------------------------------------------------------------
# Adapting the model
# ---------------------------------------------------------------------------

def adapt_form() -> None:
    """Start an adaptation in the background; refused while another training runs (its holder named)."""
    with st.form("adapt"):
        name = st.text_input("Site name (letters, digits, '.', '_', '-')", key="adapt_name")
        folders = st.text_area("Folders of your site's labelled slices, one a line", key="adapt_folders")
        start = st.form_submit_button("Adapt the model to this site", icon=":material/model_training:")
    if not start:
        return
    try:
        pid = background.launch_adaptation(folder_lines(folders), name.strip())
    except lock.TrainingBusy as error:
        st.error(f"Not started: {plain(str(error))}. One training runs at a time.", icon=":material/block:")
        return
    except ValueError as error:
        st.error(f"Not started: {plain(str(error))}", icon=":material/block:")
        return
    st.session_state["adapt_shown"] = name.strip()
    st.success(f"Adaptation for site {name.strip()} started (process {pid}).", icon=":material/check:")


def adaptations() -> list[str]:
    """Sites with an adaptation started (a log) or done."""
    root = paths.artifacts_dir() / site_store.SITES
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "adapt.log").is_file() or (p / "adaptation.json").is_file())


def adaptation_progress() -> None:
    """One site's adaptation: running or not, its log's tail, and the before/after when done."""
    names = adaptations()
    if not names:
        st.caption("No adaptation yet.")
        return
    shown = st.session_state.get("adapt_shown")
    name = st.selectbox("Adaptation", names, index=names.index(shown) if shown in names else 0, key="adapt_pick")
    folder = background.adaptation_dir(name)
    holder = lock.active_training() or {}
    running = holder.get("run") == f"site-{name}"
    result = files.read_json(folder / "adaptation.json")
    if running:
        st.info(f"Adapting to site {name}: running (process {holder.get('pid')}).", icon=":material/sync:")
        st.button("Refresh", key="adapt_refresh", icon=":material/refresh:")
    elif not result:
        st.warning(f"The adaptation for site {name} is not running and left no result: see its log.",
                   icon=":material/warning:")
    log = folder / "adapt.log"
    if log.is_file():
        with st.expander("Progress log", expanded=running):
            st.code("\n".join(log.read_text(errors="replace").splitlines()[-LOG_LINES:]) or "(empty)",
                    language=None)
    if result:
        before_after(result)


def before_after(result: dict) -> None:
    """The site's figures before and after adaptation, and what "after" means."""
    from core.training import site_adaptation  # TensorFlow: only once a result is shown

    st.markdown(f"**Site {result['site']}**: {result['patients']} patients, {result['slices']} slices, "
                f"{result['folds']} folds. Adapted run: `{result['adapted_run']}` (deploy it on Evaluate).")
    st.dataframe(site_adaptation.before_after_table(result), hide_index=True, width="stretch")
    st.caption(f"Before: the deployed model ({result['deployed']}). After: each patient scored by a model "
               "fine-tuned on the site's other patients, one that never saw that patient, so the figures "
               "estimate how the adapted model does on your next patients. No interval where too few patients.")
