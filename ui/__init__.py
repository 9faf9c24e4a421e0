"""The Streamlit app's shared code, one concern per module, used by
streamlit_app.py and the pages in app_pages/.

Caching rule: whatever is read from disk is cached under its path and its
modification time (ui.cache_keys), so nothing is computed twice, and a
dataset that changes or a run that is rewritten is picked up at the next
rerun. Models are resources (st.cache_resource, one per run, shared by all
sessions); data and arrays are values (st.cache_data).

Import rule: only ui.model (and ui.scans, which scores with it) imports the
core modules that load TensorFlow, so the pages that do not predict (Home,
Data) open without loading it (tests/test_app_layout.py).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no start-up chatter
