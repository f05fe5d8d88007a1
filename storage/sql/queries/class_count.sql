-- The number of classes of a dataset (a run's metrics table leaves out top-5 when it is trivially 1).
SELECT count(*) AS n FROM classes WHERE dataset = ?
