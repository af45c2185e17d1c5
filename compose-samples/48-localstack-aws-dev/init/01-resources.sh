#!/bin/sh
awslocal s3 mb s3://uploads
awslocal sqs create-queue --queue-name jobs
