-- Recall of every class per run and method, with the class name from the run's text bank (worst classes first).
SELECT m.run_id, m.dataset, m.method, m.class_index,
       any_value(t.class_name) AS class_name,
       round(m.value, 4) AS recall
FROM metrics m
LEFT JOIN runs r USING (run_id)
LEFT JOIN texts t ON t.textbank_id = r.textbank_id AND t.class_index = m.class_index
WHERE m.metric = 'recall'
GROUP BY m.run_id, m.dataset, m.method, m.class_index, m.value
ORDER BY m.run_id, m.method, recall, m.class_index;
