"""COVID-19 CT Explorer core: data, model, training, evaluation and explanation.

Everything the Streamlit app shows is computed here, so it is usable from Python
and from the command line (`python -m core --help`) without Streamlit.
"""
