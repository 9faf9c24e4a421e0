"""Data: what the models learn from. Classes and splits, image sizes, patients,
a gallery, and the duplicate audit (copies that leak between splits or carry
both labels). It loads no TensorFlow (tests/test_app_layout.py)."""
import pandas as pd
import streamlit as st

from core.base import paths
from core.data import audit, datasets, splits
from ui import charts
from ui.dataset_cache import duplicate_audit, image_sizes, index_or_stop, thumbnail

GALLERY_PAGE = 12
AUDIT_PAGE = 4


def overview(index: pd.DataFrame) -> None:
    """How many images, where from, and the files the index left out."""
    st.caption(f"{len(index)} images in {paths.data_dir()} · {index.attrs.get('split_source', '')}")
    problems = index.attrs.get("problems") or []
    if problems:  # files core.data.datasets.index_dataset refused: unreadable, or listed but missing
        with st.expander(f"{len(problems)} files left out of the dataset", icon=":material/warning:"):
            st.markdown("\n".join(f"- {problem}" for problem in problems))


def counts_section(index: pd.DataFrame) -> None:
    """Images and patients per split and class, side by side; images per source when there are several."""
    counts = datasets.split_counts(index)
    patients = (index.groupby(["split", "label"])["patient_id"].nunique()
                .unstack().reindex([s for s in splits.SPLITS if s in counts.index]))
    left, right = st.columns(2)
    with left:
        st.subheader("Images per split")
        st.plotly_chart(charts.class_bars(counts.drop(index="total", columns="total").stack().rename("images")
                                          .reset_index(), "images"))
        st.dataframe(counts)
    with right:
        st.subheader("Patients per split")
        st.plotly_chart(charts.class_bars(patients.stack().rename("patients").reset_index(), "patients"))
        unknown = (index["patient_id"] == index["relpath"]).sum()
        st.caption(f"Splits keep each patient in one split, since slices of one patient are near "
                   f"copies. {unknown} images have no patient in the metadata and count as their "
                   "own patient.")
    if index["source"].nunique() > 1:
        st.subheader("Images per source")
        st.dataframe(datasets.source_counts(index))
        st.caption("Each source is a dataset folder (a hospital, a collection). Splits are stratified by source "
                   "and class and keep each patient whole; sources with their own split lists keep them.")


def sizes_section() -> None:
    """Width and height of every image, and what resizing does to them."""
    st.subheader("Image sizes")
    sizes = image_sizes()
    st.plotly_chart(charts.size_scatter(sizes))
    st.caption(f"Median {sizes['width'].median():.0f} × {sizes['height'].median():.0f} px, from "
               f"{sizes['width'].min():.0f} to {sizes['width'].max():.0f} px wide. Every image is "
               "resized to the model's square input size, so wide figures get squeezed.")


def gallery_section(index: pd.DataFrame) -> None:
    """Thumbnails of one class in one split, a page at a time."""
    st.subheader("Gallery")
    left, right = st.columns(2)
    labels = sorted(index["label"].unique())
    label = left.segmented_control("Class", labels, default=labels[0], required=True,
                                   key="gallery_label", persist_state="session")
    split = right.segmented_control("Split", list(splits.SPLITS), default="train", required=True,
                                    key="gallery_split", persist_state="session")
    shown = index[(index["label"] == label) & (index["split"] == split)].reset_index(drop=True)
    n_pages = max(1, -(-len(shown) // GALLERY_PAGE))
    page = st.pagination(n_pages, key=f"gallery_page_{label}_{split}")
    start = (page - 1) * GALLERY_PAGE
    columns = st.columns(6)
    for i, row in shown.iloc[start:start + GALLERY_PAGE].iterrows():
        columns[i % 6].image(thumbnail(row["path"]), caption=row["relpath"].split("/", 1)[1])
    st.caption(f"{len(shown)} {label} images in {split}, {GALLERY_PAGE} per page.")


def audit_section(index: pd.DataFrame) -> None:
    """The duplicate audit, run on request (it hashes every image), then its pairs a page at a time."""
    st.subheader("Duplicate audit")
    st.markdown("Exact copies (same bytes) and near copies that **cross splits** (they leak test "
                "images into training) or **cross classes** (the same picture carries both labels). "
                "A near copy is two slices whose lung fields have nearly the same perceptual hash "
                f"(within 6 of 64 bits), confirmed on a finer hash (within {audit.FINE_MAX_DISTANCE} of 256 bits), "
                "which sets look-alike slices of different patients aside. A copy cropped by more than a "
                "few percent can be missed (docs/duplicate-audit.md).")
    # Hashing every image is slow: only on request, then cached for everyone.
    if st.button("Run the duplicate audit", disabled=st.session_state.get("audit_requested", False)):
        st.session_state["audit_requested"] = True
    if not st.session_state.get("audit_requested"):
        return
    pairs = duplicate_audit()
    columns = st.columns(4)
    columns[0].metric("Pairs found", len(pairs))
    columns[1].metric("Across classes", int(pairs["cross_class"].sum()))
    columns[2].metric("Across splits", int(pairs["cross_split"].sum()))
    columns[3].metric("Across sources", int(pairs["cross_source"].sum()))
    if not len(pairs):
        st.success("No duplicates cross a split or a class.")
        return
    page = st.pagination(-(-len(pairs) // AUDIT_PAGE), key="audit_page")
    by_relpath = index.set_index("relpath")["path"]
    for _, pair in pairs.iloc[(page - 1) * AUDIT_PAGE:page * AUDIT_PAGE].iterrows():
        duplicate_pair(pair, by_relpath)


def duplicate_pair(pair: pd.Series, by_relpath: pd.Series) -> None:
    """One pair of the audit: what it crosses, its hash distances, and both images."""
    crosses = [what for what, flag in (("classes (label conflict)", pair["cross_class"]),
                                       ("splits (leak)", pair["cross_split"]),
                                       ("sources", pair["cross_source"])) if flag]
    with st.container(border=True):
        st.markdown(f"**{pair['kind']} duplicate**, hash distances {pair['distance']} / 64 and "
                    f"{pair['fine_distance']} / 256, crosses {' and '.join(crosses)}")
        for column, side in zip(st.columns(2), ("a", "b")):
            column.image(thumbnail(by_relpath[pair[f"relpath_{side}"]], 320),
                         caption=f"{pair[f'relpath_{side}']} · {pair[f'label_{side}']}, {pair[f'split_{side}']}")


index = index_or_stop()
overview(index)
counts_section(index)
sizes_section()
gallery_section(index)
audit_section(index)
