# cluster policies go here
