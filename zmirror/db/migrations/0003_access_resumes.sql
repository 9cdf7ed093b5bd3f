-- How many times a blob's upstream body broke and was resumed (Range) while answering a request.
ALTER TABLE access_logs ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
