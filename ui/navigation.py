"""The page registry: each page's file, menu title, icon, URL and heading,
in menu order. streamlit_app.py declares the pages from it (st.navigation);
pages link to each other by these file paths (st.page_link, st.switch_page)."""
from __future__ import annotations

from typing import NamedTuple


class Page(NamedTuple):
    """One page of the app. url_path is given explicitly: the URLs stay those
    Streamlit derived from the numbered file names before (/Data, /Predict…)."""
    path: str
    title: str
    icon: str
    url_path: str
    heading: str


HOME = "app_pages/home.py"
DATA = "app_pages/data.py"
TRAIN = "app_pages/train.py"
SEARCH = "app_pages/search.py"
EVALUATE = "app_pages/evaluate.py"
MISCLASSIFIED = "app_pages/misclassified.py"
PREDICT = "app_pages/predict.py"
SITES = "app_pages/sites.py"

# Menu order; the first page is the default one, served at the app's root URL.
PAGES = [
    Page(HOME, "Home", ":material/home:", "Home", "COVID-19 CT Explorer"),
    Page(DATA, "Data", ":material/database:", "Data", "Data"),
    Page(TRAIN, "Train", ":material/model_training:", "Train", "Train"),
    Page(SEARCH, "Search", ":material/tune:", "Search", "Hyperparameter search"),
    Page(EVALUATE, "Evaluate", ":material/monitoring:", "Evaluate", "Evaluate"),
    Page(MISCLASSIFIED, "Misclassified", ":material/image_search:", "Misclassified", "Misclassified"),
    Page(PREDICT, "Predict", ":material/upload_file:", "Predict", "Predict"),
    Page(SITES, "Sites", ":material/local_hospital:", "Sites", "Sites"),
]


def page(path: str) -> Page:
    """The registry entry of a page file."""
    return next(entry for entry in PAGES if entry.path == path)


def icon(path: str) -> str:
    """The page's icon in the menu, for links to it."""
    return page(path).icon


def title(path: str) -> str:
    """The page's name in the menu, for links to it."""
    return page(path).title

