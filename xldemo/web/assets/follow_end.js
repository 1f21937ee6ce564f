// keeps a text view scrolled to its end as it grows, unless the reader has scrolled up; a new run follows again
let follow = true, shown = 0;
element.addEventListener('scroll', (event) => {
  const view = event.target;
  if (view.classList && view.classList.contains('xl-view'))
    follow = view.scrollTop + view.clientHeight >= view.scrollHeight - 48;
}, true);
watch('value', () => {
  const length = (props.value || '').length;
  if (length < shown) follow = true;
  shown = length;
  const view = element.querySelector('.xl-view');
  if (view && follow) view.scrollTop = view.scrollHeight;
});
