-- Classes where CODER's recall beats CLIP's prompt ensemble (largest gains first), per run.
WITH r AS (
    SELECT run_id, class_index,
           max(value) FILTER (WHERE method = 'coder') AS coder,
           max(value) FILTER (WHERE method = 'clip')  AS clip
    FROM metrics
    WHERE metric = 'recall' AND shots IS NULL
    GROUP BY ALL
)
SELECT r.run_id, r.class_index, n.class_name, round(r.clip, 4) AS clip_recall, round(r.coder, 4) AS coder_recall,
       round(r.coder - r.clip, 4) AS gain
FROM r
LEFT JOIN runs USING (run_id)
LEFT JOIN (SELECT DISTINCT textbank_id, class_index, class_name FROM texts) n
       ON n.textbank_id = runs.textbank_id AND n.class_index = r.class_index
WHERE r.coder > r.clip
ORDER BY r.run_id, gain DESC, r.class_index;
