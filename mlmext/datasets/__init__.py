"""Small datasets bundled with mlmext, with R's factor level order.

>>> from mlmext import datasets
>>> df = datasets.load("sleepstudy")
"""
from __future__ import annotations

import json
import os

import pandas as pd

__all__ = ["load", "names", "SOURCES"]

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

#: One-line source and licence note for each dataset.
SOURCES = {
    "sleepstudy": "Reaction times under sleep deprivation (Belenky et al. 2003); R package lme4, GPL (data).",
    "penicillin": "Penicillin potency, 24 plates x 6 samples, crossed (Davies & Goldsmith 1972); lme4.",
    "pastes": "Paste strength, casks nested in batches (Davies & Goldsmith 1972); lme4.",
    "dyestuff": "Dyestuff yield by batch (Davies & Goldsmith 1972); lme4.",
    "cbpp": "Contagious bovine pleuropneumonia incidence by herd and period (Lesnoff et al. 2004); lme4.",
    "grouseticks": "Ticks on red grouse chicks (Elston et al. 2001); lme4.",
    "wine": "Bitterness ratings of wine by judges (Randall 1989); R package ordinal.",
    "hsb82": "High School and Beyond 1982: math achievement of 7185 students in 160 schools (Raudenbush & Bryk 2002); R package mlmRev.",
    "dental": "Dental growth, distance at ages 8-14 of 27 children, wide layout as published (Potthoff & Roy 1964); R package nlme.",
    "dietox": "Pig weights over time with copper and vitamin E (Lauridsen et al. 1999); R package geepack.",
}


def names():
    """Names of the bundled datasets."""
    return sorted(SOURCES)


def load(name):
    """Load a bundled dataset as a DataFrame with categoricals in R's level order.

    Parameters
    ----------
    name : str
        One of :func:`names`.

    Returns
    -------
    pandas.DataFrame
    """
    key = name.lower()
    if key not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; available: {names()}")
    df = pd.read_csv(os.path.join(_HERE, key + ".csv"))
    with open(os.path.join(_HERE, key + ".levels.json")) as fh:
        levels = json.load(fh)
    for col, spec in levels.items():
        cats = [str(v) for v in spec["levels"]]
        df[col] = pd.Categorical(df[col].astype(str), categories=cats, ordered=bool(spec["ordered"][0]))
    df.attrs["source"] = SOURCES[key]
    return df
