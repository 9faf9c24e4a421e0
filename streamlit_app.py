"""COVID-19 CT Explorer, the Streamlit app:  streamlit run streamlit_app.py

Declares the pages (ui.navigation.PAGES, files in app_pages/) with Streamlit's
navigation, which also draws the sidebar menu, Home being the default page;
then draws the frame every page shares (ui.frame) and runs the chosen page.

The page files must not sit in a folder named `pages/` next to this file:
Streamlit (1.67, runtime.pages_manager.PagesManager) then takes the app for a
legacy multipage app and, on a fresh server, runs it through its own menu
("streamlit app" first, files in name order, no icons) until st.navigation
has run once; a page opened by its address got that menu.
"""
import streamlit as st

from ui import frame, navigation

declared = [st.Page(entry.path, title=entry.title, icon=entry.icon, url_path=entry.url_path,
                    default=entry.path == navigation.HOME) for entry in navigation.PAGES]
current = st.navigation(declared)
chosen = next(entry for entry, page in zip(navigation.PAGES, declared) if page is current)
frame.keep_tensorflow_kernels()
frame.draw(chosen.heading)
# A page's first visit imports its libraries (TensorFlow for the model's pages: seconds on a
# cold server); a spinner says so instead of a blank page. Streamlit shows it only after half a
# second, so a quick page does not flicker.
with st.spinner(f"Opening {chosen.title}…"):
    current.run()
