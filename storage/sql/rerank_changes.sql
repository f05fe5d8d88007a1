-- Samples whose prediction CODER* (coder_rerank) changed from CODER's, and whether the change helped.
WITH p AS (
    SELECT run_id, sample_key, any_value(label) AS label,
           max(pred) FILTER (WHERE method = 'coder')        AS coder_pred,
           max(pred) FILTER (WHERE method = 'coder_rerank') AS rerank_pred
    FROM predictions
    WHERE method IN ('coder', 'coder_rerank') AND shots IS NULL
    GROUP BY run_id, sample_key
)
SELECT run_id,
       count(*)                                                                   AS samples,
       count(*) FILTER (WHERE coder_pred <> rerank_pred)                          AS changed,
       count(*) FILTER (WHERE coder_pred <> label AND rerank_pred = label)        AS fixed,
       count(*) FILTER (WHERE coder_pred = label AND rerank_pred <> label)        AS broken,
       count(*) FILTER (WHERE coder_pred <> rerank_pred AND coder_pred <> label
                              AND rerank_pred <> label)                           AS wrong_to_wrong
FROM p
WHERE coder_pred IS NOT NULL AND rerank_pred IS NOT NULL
GROUP BY run_id
ORDER BY run_id DESC;
