"""The queue consumer: takes jobs from a `JobSource` and runs them on the local engine."""
