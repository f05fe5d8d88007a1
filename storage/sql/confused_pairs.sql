-- The most confused (true, predicted) class pairs per run and method, with class names.
WITH errors AS (
    SELECT run_id, method, dataset, label, pred, count(*) AS n
    FROM predictions
    WHERE label IS NOT NULL AND pred <> label
    GROUP BY ALL
), names AS (
    SELECT DISTINCT r.run_id, t.class_index, t.class_name
    FROM runs r JOIN texts t ON t.textbank_id = r.textbank_id
)
SELECT e.run_id, e.method, e.dataset, e.label, lt.class_name AS true_class, e.pred, pt.class_name AS predicted_class, e.n
FROM errors e
LEFT JOIN names lt ON lt.run_id = e.run_id AND lt.class_index = e.label
LEFT JOIN names pt ON pt.run_id = e.run_id AND pt.class_index = e.pred
ORDER BY e.run_id, e.method, e.n DESC, e.label, e.pred
LIMIT 50;
