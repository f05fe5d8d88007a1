-- `coderflow texts export`: the dataset of the newest run that used a text bank.
SELECT dataset FROM runs WHERE textbank_id = ? ORDER BY started_at DESC LIMIT 1
