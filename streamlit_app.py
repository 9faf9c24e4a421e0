"""COVID-19 CT Explorer, the Streamlit app:  streamlit run streamlit_app.py

Routes to the pages (ui.PAGES, files in pages/) with Streamlit's navigation,
which also draws the sidebar menu; Home is the default page.
"""
import streamlit as st

import ui

st.navigation([st.Page(page, title=title, icon=icon, default=page == ui.HOME)
               for page, title, icon in ui.PAGES]).run()
