-- IMO adapters: intra-modal overlap and feature variance per image encoder, next to its few-shot accuracy.
WITH overlap AS (
    SELECT model_id, dataset,
           arg_max(value, run_id) FILTER (WHERE metric = 'overlap')  AS overlap,
           arg_max(value, run_id) FILTER (WHERE metric = 'variance') AS variance
    FROM metrics
    WHERE method = 'overlap'
    GROUP BY ALL
), fewshot AS (
    SELECT model_id, dataset, method, shots, round(avg(value), 4) AS top1_mean, count(*) AS n
    FROM metrics
    WHERE metric = 'top1' AND class_index IS NULL AND shots IS NOT NULL
    GROUP BY ALL
)
SELECT o.dataset, o.model_id, round(o.overlap, 4) AS overlap, round(o.variance, 6) AS variance,
       f.method, f.shots, f.top1_mean, f.n AS results
FROM overlap o
LEFT JOIN fewshot f USING (model_id, dataset)
ORDER BY o.dataset, f.method, f.shots, o.model_id;
