from mlmext import datasets, plots
from mlmext.formula import api as mf

df = datasets.load("sleepstudy")
res = mf.lmer("Reaction ~ Days + (Days | Subject)", df).fit()
print(res.summary())
fig = plots.caterpillar(res)
