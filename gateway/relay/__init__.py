"""The relay side: routing, delivery attempts, retries, bounces."""
