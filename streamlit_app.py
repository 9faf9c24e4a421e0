"""COVID-19 CT Explorer, the Streamlit app:  streamlit run streamlit_app.py

Declares the pages (ui.navigation.PAGES, files in pages/) with Streamlit's
navigation, which also draws the sidebar menu, Home being the default page;
then draws the frame every page shares (ui.frame) and runs the chosen page.
"""
import streamlit as st

from ui import frame, navigation

declared = [st.Page(entry.path, title=entry.title, icon=entry.icon, url_path=entry.url_path,
                    default=entry.path == navigation.HOME) for entry in navigation.PAGES]
current = st.navigation(declared)
frame.keep_tensorflow_kernels()
frame.draw(next(entry.heading for entry, page in zip(navigation.PAGES, declared) if page is current))
current.run()
