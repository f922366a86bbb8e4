## Bundled tutorial datasets that are not in ../shared/data (run from the repository root):
##   Rscript tools/r_reference/datasets.R
## Writes mlmext/datasets/data/{dental,hsb82}.csv and their .levels.json (R's level order).
suppressPackageStartupMessages({ library(nlme); library(mlmRev) })
source("tools/r_reference/common.R")
out <- "mlmext/datasets/data"

save_levels <- function(df, name) {
  lv <- list()
  for (col in names(df)) if (is.factor(df[[col]]))
    lv[[col]] <- list(levels = levels(df[[col]]), ordered = list(FALSE))
  write_json_file(lv, file.path(out, paste0(name, ".levels.json")))
  write.csv(df, file.path(out, paste0(name, ".csv")), row.names = FALSE)
}

## Potthoff & Roy (1964) dental growth data in the wide layout in which it was published:
## one row per child, one column per age; the tutorial reshapes it to long form.
d <- as.data.frame(Orthodont)
d$Subject <- factor(as.character(d$Subject), levels = unique(as.character(d$Subject)))
w <- reshape(d[, c("Subject", "Sex", "age", "distance")], idvar = c("Subject", "Sex"),
             timevar = "age", direction = "wide", sep = "_")
rownames(w) <- NULL
save_levels(w, "dental")

## High School and Beyond (Raudenbush & Bryk): math achievement of 7185 students in 160 schools.
h <- as.data.frame(Hsb82)[, c("school", "mAch", "meanses", "cses", "ses", "sector", "sx", "minrty")]
save_levels(h, "hsb82")
