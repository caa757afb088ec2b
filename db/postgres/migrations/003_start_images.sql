-- Placeholder for i13-discord's 003_start_images.sql (issue 13), so that 004 follows without a gap on
-- this branch. The integrator keeps the real file of the same name when merging.
SELECT 1;
