-- `coderflow compare`: the methods with predictions in each of two runs (one row per run that has any).
SELECT run_id, list(DISTINCT method ORDER BY method) AS methods
FROM predictions
WHERE run_id IN (?, ?)
GROUP BY run_id
