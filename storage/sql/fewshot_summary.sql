-- Few-shot accuracy per method and shots: mean and sample standard deviation (ddof 1, as the report and plots:
-- tasks/evaluate/metrics.py SEED_STD_DDOF) of test top-1 over seeds, per run.
SELECT run_id, dataset, model_id, method, shots,
       count(*)                      AS seeds,
       round(avg(value), 4)          AS top1_mean,
       round(stddev_samp(value), 4)  AS top1_std
FROM metrics
WHERE metric = 'top1' AND class_index IS NULL AND shots IS NOT NULL
GROUP BY ALL
ORDER BY run_id DESC, method, shots;
