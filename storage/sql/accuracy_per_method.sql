-- Accuracy of every method per run, dataset and model (top-1, top-5, mean per-class recall, ECE), newest runs first;
-- unrounded, so that differences (vs_clip) are exact: the displays round.
SELECT m.run_id, m.dataset, m.split, m.model_id, m.method, m.shots,
       avg(m.value) FILTER (WHERE m.metric = 'top1') AS top1,
       avg(m.value) FILTER (WHERE m.metric = 'top5') AS top5,
       avg(m.value) FILTER (WHERE m.metric = 'mean_per_class_recall') AS mean_per_class_recall,
       CAST(max(m.value) FILTER (WHERE m.metric = 'n_samples') AS INTEGER) AS n_samples,
       avg(m.value) FILTER (WHERE m.metric = 'ece') AS ece
FROM metrics m LEFT JOIN runs r USING (run_id)
WHERE m.class_index IS NULL
GROUP BY ALL
ORDER BY max(r.started_at) DESC NULLS LAST, m.dataset, m.method, m.shots;
