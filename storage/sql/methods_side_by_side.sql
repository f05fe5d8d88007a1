-- Top-1 accuracy of every zero-shot method side by side, one row per run (methods as columns).
SELECT run_id, dataset, model_id,
       round(max(value) FILTER (WHERE method = 'clip'), 4)         AS clip,
       round(max(value) FILTER (WHERE method = 'dclip'), 4)        AS dclip,
       round(max(value) FILTER (WHERE method = 'cupl'), 4)         AS cupl,
       round(max(value) FILTER (WHERE method = 'waffle'), 4)       AS waffle,
       round(max(value) FILTER (WHERE method = 'coder'), 4)        AS coder,
       round(max(value) FILTER (WHERE method = 'coder_rerank'), 4) AS coder_rerank
FROM metrics
WHERE metric = 'top1' AND class_index IS NULL AND shots IS NULL
GROUP BY ALL
ORDER BY run_id DESC;
