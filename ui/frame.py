"""What every page shares, drawn once by streamlit_app.py around the page
chosen in the menu: the browser tab's title and icon, the wide layout, the
research-use disclaimer under the menu, and the page's heading."""
from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from core.inference.report import DISCLAIMER  # one wording: the reports print it too

APP_NAME = "COVID-19 CT Explorer"
__all__ = ["APP_NAME", "DISCLAIMER", "disclaimer_banner", "draw", "keep_tensorflow_kernels"]


def keep_tensorflow_kernels() -> None:
    """Streamlit calls keras.backend.clear_session() after every script run
    (script_runner._clean_problem_modules), to free the models that scripts
    build on each run. That also empties TensorFlow's kernel cache, so in the
    next run the first call of each compiled model rebuilds its kernels, for
    a prediction and again for its Grad-CAM. This app builds its models once
    (st.cache_resource) and keeps them; it draws no matplotlib figure (the
    function's other duty). Patching the function loads nothing."""
    script_runner._clean_problem_modules = lambda: None


def draw(heading: str) -> None:
    """The frame of the page about to run: page config, the disclaimer under
    the sidebar menu (which st.navigation draws) and the page's title."""
    st.set_page_config(page_title=f"{heading} · {APP_NAME}", layout="wide",
                       page_icon=":material/pulmonology:")
    st.sidebar.caption(DISCLAIMER)
    st.title(heading)


def disclaimer_banner() -> None:
    """The disclaimer in the page itself, where a result could be taken for advice."""
    st.warning(DISCLAIMER, icon=":material/warning:")
