-- `coderflow runs`: one row per run, newest first, with its zero-shot top-1 per method, optionally filtered by
-- dataset, flow and model ($model: a model id, or an architecture matching its ids and recorded model name).
SELECT r.run_id, r.flow, r.dataset, r.model_id, r.textbank_id, r.started_at,
       round(coalesce(r.duration_s, date_diff('millisecond', r.started_at, r.finished_at) / 1000), 1) AS seconds,
       r.status, string_agg(m.method || ' ' || round(m.value, 4), ', ' ORDER BY m.value DESC) AS top1,
       coalesce(r.flow_run_id, json_extract_string(r.config, '$.flow_run_id')) AS flow_run_id
FROM runs r
LEFT JOIN metrics m ON m.run_id = r.run_id AND m.metric = 'top1' AND m.class_index IS NULL AND m.shots IS NULL
WHERE ($dataset IS NULL OR r.dataset = $dataset) AND ($flow IS NULL OR r.flow = $flow)
  AND ($model IS NULL OR r.model_id = $model OR starts_with(r.model_id, $model || '__')
       OR json_extract_string(r.config, '$.model.name') = $model)
GROUP BY ALL
ORDER BY r.started_at DESC
