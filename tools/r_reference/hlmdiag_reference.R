## R reference values for mlmext's case-deletion diagnostics and leverage (tests/test_influence.py).
##
## Run from the repository root:   Rscript tools/r_reference/hlmdiag_reference.R   (about 5 s)
##
## HLMdiag is not packaged for Debian and CRAN is not reachable here, so its quantities are
## computed below from lme4 fits by HLMdiag's published definitions (Loy & Hofmann 2014, its
## help pages), written out in plain R with dense matrices:
##   one-step (variance components held at the lme4 estimates; HLMdiag's approx = TRUE):
##     V = sigma^2 (I + Z Lambda Lambda' Z'), P = V^-1 - V^-1 X (X'V^-1X)^-1 X'V^-1, e = y - X beta,
##     d_I = (X'V^-1X)^-1 X'V^-1[, I] P_II^-1 (V^-1 e)_I, V(beta_(I)) = (X_(I)'V_(I)^-1 X_(I))^-1
##     (V_(I): V without the rows and columns I), cooksd = d'(X'V^-1X) d / p,
##     mdffits = d' V(beta_(I))^-1 d / p, covtrace = |tr((X'V^-1X) V(beta_(I))) - p|,
##     covratio = det V(beta_(I)) / det (X'V^-1X)^-1;
##   refit (approx = FALSE): the same with lme4 refits without I (vcov(), VarCorr()), and
##     rvc = vcov_(I) / vcov - 1 for each row of as.data.frame(VarCorr());
##   leverage: diag of H1 = X (X'V^-1X)^-1 X'V^-1, H2 = ZDZ'V^-1 (I - H1), ZDZ'/sigma^2.
## Unlike the Python side these start from lme4's estimates, so the tests compare with a
## tolerance for the two optimizers' precision.

suppressPackageStartupMessages({
  library(lme4)
})
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/inference"
start_script("hlmdiag_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "Matrix"))
for (nm in c("sleepstudy", "penicillin")) read_data(nm)

## every fifth row (from the third) left out: an unbalanced design, where refits and one-step
## changes differ (the Python test drops the same rows)
sleepstudy_unbal <- sleepstudy[(seq_len(nrow(sleepstudy)) - 1) %% 5 != 2, ]
rownames(sleepstudy_unbal) <- NULL

dense <- function(m) {
  X <- as.matrix(getME(m, "X")); y <- getME(m, "y"); n <- length(y)
  s2 <- sigma(m)^2
  ZDZ <- s2 * as.matrix(crossprod(getME(m, "A")))       # Z Lambda Lambda' Z' sigma^2
  V <- ZDZ + diag(s2, n)
  Vinv <- solve(V)
  C <- solve(t(X) %*% Vinv %*% X)
  beta <- C %*% t(X) %*% Vinv %*% y
  list(X = X, y = y, n = n, s2 = s2, ZDZ = ZDZ, V = V, Vinv = Vinv, C = C, beta = beta,
       e = y - X %*% beta, P = Vinv - Vinv %*% X %*% C %*% t(X) %*% Vinv)
}

one_step <- function(D, I) {
  p <- ncol(D$X)
  d <- D$C %*% t(D$X) %*% D$Vinv[, I, drop = FALSE] %*% solve(D$P[I, I, drop = FALSE]) %*%
    D$Vinv[I, , drop = FALSE] %*% D$e
  keep <- setdiff(seq_len(D$n), I)
  Xk <- D$X[keep, , drop = FALSE]
  Ci <- solve(t(Xk) %*% solve(D$V[keep, keep]) %*% Xk)
  c(cooksd = drop(t(d) %*% solve(D$C) %*% d) / p, mdffits = drop(t(d) %*% solve(Ci) %*% d) / p,
    covtrace = abs(sum(diag(solve(D$C) %*% Ci)) - p), covratio = det(Ci) / det(D$C),
    setNames(drop(d), colnames(D$X)))
}

leverage_rows <- function(D) {
  H1 <- D$X %*% D$C %*% t(D$X) %*% D$Vinv
  H2 <- D$ZDZ %*% D$Vinv %*% (diag(D$n) - H1)
  data.frame(overall = diag(H1) + diag(H2), fixef = diag(H1), ranef = diag(H2),
             ranef.uc = diag(D$ZDZ) / D$s2)
}

refit_rows <- function(m, data, sets) {
  p <- length(fixef(m))
  V0 <- as.matrix(vcov(m)); vc0 <- as.data.frame(VarCorr(m))$vcov
  t(sapply(sets, function(I) {
    sub <- droplevels(data[-I, ])
    m1 <- suppressMessages(suppressWarnings(update(m, data = sub)))
    d <- fixef(m) - fixef(m1)
    V1 <- as.matrix(vcov(m1))
    c(cooksd = drop(t(d) %*% solve(V0) %*% d) / p, mdffits = drop(t(d) %*% solve(V1) %*% d) / p,
      covtrace = abs(sum(diag(solve(V0) %*% V1)) - p), covratio = det(V1) / det(V0),
      setNames(as.data.frame(VarCorr(m1))$vcov / vc0 - 1, paste0("rvc", seq_along(vc0))), d)
  }))
}

rows_list <- function(M, labels) lapply(seq_len(nrow(M)), function(i) c(list(label = labels[i]), as.list(M[i, ])))

hlmdiag_case <- function(name, call, data_name, group, obs = TRUE, refit_obs = FALSE) {
  m <- eval(parse(text = call))
  data <- get(data_name)
  D <- dense(m)
  f <- data[[group]]
  gsets <- lapply(levels(f), function(l) which(f == l))
  osets <- as.list(seq_len(D$n))
  lev <- leverage_rows(D)
  out <- list(name = name, r_call = call, data_name = data_name, group = group,
              fixef = as.list(fixef(m)), sigma = sigma(m), theta = unname(getME(m, "theta")),
              varcorr = as.data.frame(VarCorr(m))[, c("grp", "var1", "var2", "vcov")],
              one_step_group = rows_list(t(sapply(gsets, function(I) one_step(D, I))), levels(f)),
              refit_group = rows_list(refit_rows(m, data, gsets), levels(f)),
              leverage_obs = as.list(lev),
              leverage_group = as.list(aggregate(lev, list(f), mean)[, -1]))
  if (obs) out$one_step_obs <- rows_list(t(sapply(osets, function(I) one_step(D, I))), seq_len(D$n) - 1)
  if (refit_obs) out$refit_obs <- rows_list(refit_rows(m, data, osets), seq_len(D$n) - 1)
  write_ref(out, name, REF_DIR, versions = R_VERSIONS)
}

hlmdiag_case("hlmdiag_sleepstudy", "lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)",
             "sleepstudy", "Subject")
hlmdiag_case("hlmdiag_sleepstudy_unbal", "lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy_unbal)",
             "sleepstudy_unbal", "Subject", refit_obs = FALSE)
hlmdiag_case("hlmdiag_penicillin", "lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin)",
             "penicillin", "sample")
