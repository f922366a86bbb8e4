# Reference values for tests/test_inputs_glmm.py (the Poisson sqrt-link case).
#
# The data are a deterministic function of the row number (no RNG), so the Python test
# rebuilds exactly the same rows without a data file:
#   i = 0..199, g = i %/% 10 (20 groups), x = ((7 i) %% 13) / 13,
#   mu = (3 + x + 0.3 sin(1.3 g + 0.5))^2, y = floor(mu + sqrt(mu) sin(2.1 i) + 0.5).
# Every linear predictor stays positive, where the sqrt link is monotone.
# Run from the repository root:  Rscript tools/r_reference/glmm_inputs_reference.R
# (lme4 1.1-31, R 4.2.2); it prints the values the test embeds.
suppressMessages(library(lme4))
i <- 0:199
g <- i %/% 10
x <- ((7 * i) %% 13) / 13
mu <- (3 + x + 0.3 * sin(1.3 * g + 0.5))^2
y <- floor(mu + sqrt(mu) * sin(2.1 * i) + 0.5)
d <- data.frame(y = y, x = x, g = factor(g))
cat("sum(y) =", sum(y), "\n")
f <- glmer(y ~ x + (1 | g), data = d, family = poisson(link = "sqrt"),
           control = glmerControl(optimizer = "bobyqa", tolPwrss = 1e-10,
                                  optCtrl = list(rhobeg = 0.2, rhoend = 1e-10)))
print(fixef(f), digits = 12)
print(getME(f, "theta"), digits = 12)
print(logLik(f), digits = 12)
print(sqrt(diag(vcov(f))), digits = 12)
