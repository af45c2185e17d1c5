FROM squidfunk/mkdocs-material:9.5
COPY . /docs
CMD ["serve", "--dev-addr=0.0.0.0:8000"]
