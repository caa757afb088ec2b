-- Placeholder for i13-discord's 004_start_images.sql (issue 13), so that 005 follows without a gap on
-- this branch. The integrator keeps the real file of the same name when merging.
SELECT 1;
