"""The audit: per-set metrics, membership inference, attacks, verdict and reports."""
