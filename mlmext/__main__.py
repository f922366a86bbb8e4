"""``python -m mlmext``: fit lme4's sleepstudy model on the bundled data and print the summary."""
from mlmext import datasets
from mlmext.formula import api as mf


def main():
    df = datasets.load("sleepstudy")
    res = mf.lmer("Reaction ~ Days + (Days | Subject)", data=df).fit()
    print(res.summary())


if __name__ == "__main__":
    main()
