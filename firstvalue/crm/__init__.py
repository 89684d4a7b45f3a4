"""CRM, calendar and email integrations: the scorecard pushed to the CRM, and the signed
webhooks that bring deals, meetings and email engagement in."""
