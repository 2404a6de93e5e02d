"""Streamlit explorer over a ``normprobe analyze`` results folder: ``streamlit run app/main.py -- --results DIR``."""
