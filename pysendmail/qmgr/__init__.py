"""Queue manager role: queue runs (deliver, record outcomes, retry, bounce) and pickup."""
