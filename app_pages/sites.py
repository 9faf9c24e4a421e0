"""Sites: does the deployed model hold at your hospital? A site check of a
folder of your scans against the model's validation scans (no labels
needed), site profiles (the model recalibrated, its threshold moved, on your
labelled scans; chosen on Predict), and adapting the model to your site
(fine-tuning in the background, measured on patients each model never saw).
Everything it computes lives in core (site_check, site_profile, site_store,
site_adaptation); the pieces are ui.sites."""
import streamlit as st

from core.inference import deploy
from ui import frame, navigation
from ui.sites import adapt_form, adaptation_progress, fit_form, profiles_list, show_check

FOLDER_HELP = ("A folder on the server holding your site's slices (PNG, JPEG or DICOM), one sub-folder per "
               "patient if you can: slices of one patient counted as different patients look like a difference.")


def site_check_section(run: dict) -> None:
    """(a) Does the model hold at your site? A folder of the site's slices, no labels needed."""
    st.subheader("Does the model hold at your site?")
    st.caption("Compares your scans, patient by patient, with the scans this model was validated on. If they "
               "differ, its test figures do not hold at your site. No labels are needed.")
    with st.form("site_check"):
        folder = st.text_input("Folder of your site's slices", key="check_folder", help=FOLDER_HELP,
                               placeholder="/data/my-hospital/ct-slices")
        checked = st.form_submit_button("Check these scans", icon=":material/fact_check:")
    if checked:
        st.session_state["checked_folder"] = folder.strip()
    if st.session_state.get("checked_folder"):
        show_check(run, st.session_state["checked_folder"])


def profiles_section(run: dict) -> None:
    """(b) Site profiles: the model's calibration and threshold refitted on the site's labelled slices."""
    st.subheader("Site profiles")
    st.caption("A profile recalibrates the model's probabilities and moves its threshold for one site, fitted on "
               "its labelled slices (at least 10 patients, 3 of each class). It does not change how the model "
               "ranks scans. Choose a profile on Predict under *Site*.")
    profiles_list(run)
    fit_form(run)


def adaptation_section() -> None:
    """(c) Adapt the model to your site: fine-tuning in the background, one training at a time."""
    st.subheader("Adapt the model to your site")
    st.caption("Fine-tunes the deployed model on its training scans plus your site's labelled patients, fold by "
               "fold, and measures each fold's model on the patients it never saw; then trains the adapted model "
               "on all of them. It takes as long as several trainings, and no other training runs meanwhile.")
    adapt_form()
    adaptation_progress()


frame.disclaimer_banner()
run = deploy.deployed_run()
if run is None:
    st.info("No model is deployed: the site check, the site profiles and the adaptation all start from the "
            "model that answers on Predict. Deploy one on Evaluate (*Use this model for predictions*) first.",
            icon=":material/info:")
    st.page_link(navigation.EVALUATE, label="Evaluate", icon=navigation.icon(navigation.EVALUATE))
    st.stop()
st.caption(f"Model: run {run['id']} (deployed).")
site_check_section(run)
st.divider()
profiles_section(run)
st.divider()
adaptation_section()
