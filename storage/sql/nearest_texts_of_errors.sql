-- Texts that are most often the nearest neighbour (highest CODER cosine) of images CODER misclassified.
WITH errs AS (
    SELECT DISTINCT p.dataset, p.split, p.sample_key, r.model_id, r.textbank_id
    FROM predictions p JOIN runs r USING (run_id)
    WHERE p.method = 'coder' AND p.pred <> p.label
), nearest AS (
    SELECT DISTINCT c.textbank_id, c.sample_key,
           coalesce(c.indices[1], list_position(c.vector, list_max(c.vector)) - 1) AS text_index
    FROM coder c
    JOIN errs e USING (dataset, split, sample_key, model_id, textbank_id)
)
SELECT t.text_type, t.class_name, t.text, count(*) AS times_nearest
FROM nearest n JOIN texts t USING (textbank_id, text_index)
GROUP BY ALL
ORDER BY times_nearest DESC, t.text
LIMIT 25;
