-- IMO adapters: intra-modal overlap and feature variance per image encoder, next to its few-shot accuracy.
WITH overlap AS (
    SELECT model_id, dataset,
           arg_max(value, run_id) FILTER (WHERE metric = 'overlap')  AS overlap,
           arg_max(value, run_id) FILTER (WHERE metric = 'variance') AS variance
    FROM metrics
    WHERE method = 'overlap'
    GROUP BY ALL
), fewshot AS (
    -- a `<method>_adapted` result read the adapted features: it belongs to the adapted encoder's overlap (model id
    -- `<model>__<adapter id>`, the id from the run's model.adapter, an id or a file named by it); the others, and
    -- Tip-Adapter on IMO's grid (`tip_adapter_imo`, never averaged with `tip_adapter`), to the original encoder's
    SELECT CASE WHEN m.method LIKE '%\_adapted' ESCAPE '\'
                THEN m.model_id || '__' || nullif(regexp_extract(json_extract_string(r.config, '$.model.adapter'),
                                                                 'adapter-[0-9a-f]+'), '')
                ELSE m.model_id END AS model_id,
           m.dataset, m.method, m.shots, round(avg(m.value), 4) AS top1_mean, count(*) AS n
    FROM metrics m LEFT JOIN runs r USING (run_id)
    WHERE m.metric = 'top1' AND m.class_index IS NULL AND m.shots IS NOT NULL
    GROUP BY ALL
)
SELECT o.dataset, o.model_id, round(o.overlap, 4) AS overlap, round(o.variance, 6) AS variance,
       f.method, f.shots, f.top1_mean, f.n AS results
FROM overlap o
LEFT JOIN fewshot f USING (model_id, dataset)
ORDER BY o.dataset, f.method, f.shots, o.model_id;
