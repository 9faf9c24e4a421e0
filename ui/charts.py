"""The Plotly figures of the pages, one function each, in one look: the
same class colours everywhere, the current threshold in red, the
validation choice in grey."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.evaluation import classification, tables
from core.inference import calibration, scan_decision
from core.inference.scan_decision import ScanResult
from ui.formatting import fmt

TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
# The same class colours on every chart; a class name not listed gets Plotly's next colour.
CLASS_COLORS = {"COVID": "#e45756", "NonCOVID": "#4c78a8"}
SCORED_COLOR, UNSCORED_COLOR, REFUSED_COLOR = "#e45756", "#888888", "#f2a93b"  # a scan's slices
INSIDE_BOTTOM_RIGHT = dict(x=0.98, y=0.02, xanchor="right", yanchor="bottom", bgcolor="rgba(0,0,0,0.3)")


def class_bars(long: pd.DataFrame, y: str) -> go.Figure:
    """Counts per split and class (a long table: split, label, y), bars grouped by split."""
    return px.bar(long, x="split", y=y, color="label", barmode="group", text_auto=True, height=320,
                  color_discrete_map=CLASS_COLORS)


def size_scatter(sizes: pd.DataFrame) -> go.Figure:
    """Width against height of every image, by class, with both distributions on the margins."""
    return px.scatter(sizes, x="width", y="height", color="label", hover_name="relpath",
                      marginal_x="histogram", marginal_y="histogram", opacity=0.6,
                      color_discrete_map=CLASS_COLORS, height=420,
                      labels={"width": "width (px)", "height": "height (px)"})


def roc_at_threshold(y, prob, at: dict, at_chosen: dict, threshold: float, chosen: float) -> go.Figure:
    """The ROC curve with the operating point of the threshold (red) and of the validation choice (grey)."""
    roc = tables.roc_points(y, prob)
    figure = go.Figure(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", showlegend=False,
                                  customdata=roc["threshold"],
                                  hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<br>threshold %{customdata:.3f}"))
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="gray",
                       name="chance", showlegend=False)
    figure.add_scatter(x=[1 - at_chosen["specificity"]], y=[at_chosen["recall"]], mode="markers",
                       marker=dict(size=12, symbol="circle-open", color="gray", line_width=2),
                       name=f"validation choice {chosen:.3f}")
    figure.add_scatter(x=[1 - at["specificity"]], y=[at["recall"]], mode="markers",
                       marker=dict(size=12, color="red"), name=f"threshold {threshold:.3f}")
    figure.update_layout(title=f"ROC curve (AUC {fmt(at['roc_auc'])})", height=400,
                         xaxis_title="1 − specificity", yaxis_title="sensitivity",
                         legend=INSIDE_BOTTOM_RIGHT)
    return figure


def precision_recall(y, prob, at: dict, threshold: float) -> go.Figure:
    """The precision-recall curve, the prevalence line, and the threshold's point."""
    pr = tables.pr_points(y, prob)
    figure = go.Figure(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", showlegend=False,
                                  line_shape="hv"))
    figure.add_hline(y=y.mean(), line_dash="dot", line_color="gray",
                     annotation_text="prevalence", annotation_position="bottom right")
    figure.add_scatter(x=[at["recall"]], y=[at["precision"]], mode="markers",
                       marker=dict(size=12, color="red"), name=f"threshold {threshold:.3f}")
    figure.update_layout(title=f"Precision-recall (AP {fmt(at['pr_auc'])})", height=400,
                         xaxis_title="recall", yaxis_title="precision", showlegend=False)
    return figure


def confusion_matrix(y, prob, threshold: float, labels: tuple[str, str], title: str) -> go.Figure:
    """The confusion matrix at `threshold`, counts in large print."""
    matrix = tables.confusion_frame(y, prob, threshold, labels=labels)
    figure = px.imshow(matrix, text_auto=True, color_continuous_scale="Blues", aspect="auto")
    figure.update_layout(title=title, height=400, coloraxis_showscale=False)
    figure.update_traces(textfont_size=22)
    return figure


def roc_curves(curves: dict) -> go.Figure:
    """ROC curves of several prediction sets, {name: (y_true, prob)}, on one chart."""
    figure = go.Figure()
    for name, (y_true, prob) in curves.items():
        points = tables.roc_points(y_true, prob)
        auc = classification.binary_metrics(y_true, prob)["roc_auc"]
        figure.add_scatter(x=points["fpr"], y=points["tpr"], mode="lines", name=f"{name} (AUC {fmt(auc)})")
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="gray", showlegend=False)
    figure.update_layout(title="ROC curves", height=400, xaxis_title="1 − specificity", yaxis_title="sensitivity",
                         legend=dict(x=0.98, y=0.02, xanchor="right", yanchor="bottom"))
    return figure


def reliability(y, probabilities: dict, positive: str) -> go.Figure:
    """Reliability diagram (10 bins) of each set of probabilities, {label: prob}, against the diagonal."""
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="gray", name="perfect")
    for label, prob in probabilities.items():
        bins = calibration.reliability_table(y, prob)
        figure.add_scatter(x=bins["predicted"], y=bins["observed"], mode="lines+markers", name=label,
                           customdata=bins["n"], hovertemplate="predicted %{x:.2f}, observed %{y:.2f}"
                                                               "<br>%{customdata} scans")
    figure.update_layout(title="Reliability diagram (10 bins)", height=360, xaxis_title=f"predicted P({positive})",
                         yaxis_title=f"observed share of {positive}", legend=INSIDE_BOTTOM_RIGHT)
    return figure


def resolution_scatter(pixels, prob, true_class, positive: str) -> go.Figure:
    """Each test scan's probability against its pixel count (log scale), by true class."""
    # The classes' own colours, as everywhere: the default sequence can draw two near-identical blues.
    figure = px.scatter(x=pixels, y=prob, color=true_class, log_x=True, opacity=0.7,
                        color_discrete_map=CLASS_COLORS,
                        labels={"x": "pixels in the scan file (width × height)", "y": f"P({positive})",
                                "color": "true class"})
    figure.update_layout(height=360)
    return figure


def history(frame: pd.DataFrame) -> go.Figure:
    """Loss and ROC-AUC per epoch, training vs validation, with a line where
    fine-tuning starts (history.csv restarts its epoch count at each phase)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "ROC-AUC"))
    x = np.arange(1, len(frame) + 1)
    for column, metric in enumerate(("loss", "auc"), start=1):
        for prefix, name, color in (("", "train", TRAIN_COLOR), ("val_", "validation", VAL_COLOR)):
            if prefix + metric in frame:
                figure.add_scatter(x=x, y=frame[prefix + metric], name=name, mode="lines+markers",
                                   line_color=color, legendgroup=name, showlegend=column == 1,
                                   row=1, col=column)
    if "epoch" in frame and len(frame) > 1:
        for start in np.flatnonzero(frame["epoch"].diff() <= 0):
            figure.add_vline(x=start + 0.5, line_dash="dot", line_color="gray")
            figure.add_annotation(x=start + 0.5, y=1.08, yref="paper", text="fine-tuning",
                                  showarrow=False, font_color="gray")
    figure.update_xaxes(title_text="epoch (both phases)", dtick=1 if len(frame) <= 20 else None)
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10),
                         legend=dict(orientation="h", y=-0.3))
    return figure


def search_trials(scored: pd.DataFrame) -> go.Figure:
    """Each scored trial's validation ROC-AUC, and the best so far as a step line."""
    figure = px.scatter(scored, x="trial", y="val_roc_auc", color="state", hover_data=["run"],
                        title="Validation ROC-AUC by trial")
    figure.add_scatter(x=scored["trial"], y=scored["val_roc_auc"].cummax(), mode="lines",
                       line_shape="hv", name="best so far", line_color="gray")
    figure.update_layout(height=300, margin={"t": 40, "b": 10, "l": 10, "r": 10})
    return figure


def scan_probability_curve(result: ScanResult, shown: int) -> go.Figure:
    """P(positive) of each scored slice along the body axis (mm where the scan has
    positions, else the slice number); slices not scored are grey crosses at 0,
    slices the guard refused orange; the slice shown is marked."""
    positions = result.scan.positions
    x = np.asarray(positions if positions else np.arange(1, len(result.scan.slices) + 1), dtype=float)
    figure = go.Figure()
    counted = result.counted
    figure.add_scatter(x=x[counted], y=[result.probability[i] for i in counted], mode="lines+markers",
                       name="scored", line_color=SCORED_COLOR,
                       customdata=[[i + 1, result.lung_fraction[i]] for i in counted],
                       hovertemplate="slice %{customdata[0]}: P %{y:.2f}<br>lung %{customdata[1]:.0%}<extra></extra>")
    refused = [i for i in result.scored if result.refusals[i]]
    if refused:
        figure.add_scatter(x=x[refused], y=[result.probability[i] for i in refused], mode="markers",
                           name="not like the training scans (left out)", marker=dict(color=REFUSED_COLOR, size=9))
    unscored = sorted(set(range(len(result.scan.slices))) - set(result.scored))
    if unscored:
        figure.add_scatter(x=x[unscored], y=np.zeros(len(unscored)), mode="markers",
                           name=f"not scored (lung under {scan_decision.MIN_LUNG_AREA:.0%} of the slice, or "
                                f"within {scan_decision.MIN_SPACING_MM:g} mm of a scored slice)",
                           marker=dict(color=UNSCORED_COLOR, symbol="x", size=7),
                           customdata=[[i + 1, result.lung_fraction[i]] for i in unscored],
                           hovertemplate="slice %{customdata[0]}: not scored<br>lung %{customdata[1]:.0%}"
                                         "<extra></extra>")
    figure.add_vline(x=x[shown], line_dash="dot", line_color="gray")
    figure.update_layout(height=300, margin=dict(t=30, b=10, l=10, r=10), yaxis_range=[-0.05, 1.05],
                         xaxis_title="position along the body axis, feet → head (mm)" if positions
                         else "slice (file order)", yaxis_title=f"P({result.positive_class})",
                         legend=dict(orientation="h", y=-0.35), title="Probability per slice")
    return figure
